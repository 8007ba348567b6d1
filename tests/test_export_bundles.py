"""Several bundles from one load and one fp32 graph export; text-only prompts through a VLM bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketvlm.export import pipeline
from pocketvlm.export.quantize import QuantConfig
from pocketvlm.export.registry import get_family
from pocketvlm.runtime.dual_encoder import DualEncoder
from pocketvlm.runtime.errors import ExportError
from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.manifest import load_bundle
from pocketvlm.runtime.vlm import VisionLanguageModel


def test_one_export_many_quantizations(workspace, photos, tmp_path):
    outs = [(tmp_path / q, QuantConfig.parse(q)) for q in ("fp32", "int8", "int4")]
    made = pipeline.export_bundles(workspace.checkpoint("clip"), outs)
    assert made == [o for o, _ in outs]
    methods = [load_bundle(o).manifest["components"]["image_encoder"]["quantization"]["method"] for o, _ in outs]
    assert methods[0] == "fp32" and methods[1] != methods[2] != "fp32"
    image = photos["astronaut"]
    alone = DualEncoder.load(workspace.bundle("clip", "fp32")).image_features([image])
    together = DualEncoder.load(tmp_path / "fp32").image_features([image])
    np.testing.assert_array_equal(alone, together)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_bundles_refuses_a_repeated_output(workspace, tmp_path):
    with pytest.raises(ExportError, match="own output directory"):
        pipeline.export_bundles(workspace.checkpoint("clip"), [(tmp_path / "a", QuantConfig.parse("fp32")),
                                                               (tmp_path / "a", QuantConfig.parse("int8"))])


def test_interrupted_multi_export_leaves_nothing(workspace, tmp_path, monkeypatch):
    real, calls = pipeline.quantize_file, []

    def interrupt_later(src, dst, spec):
        calls.append(dst)
        if len(calls) == 3:  # the second bundle's first component
            raise KeyboardInterrupt
        real(src, dst, spec)

    monkeypatch.setattr(pipeline, "quantize_file", interrupt_later)
    with pytest.raises(KeyboardInterrupt):
        pipeline.export_bundles(workspace.checkpoint("clip"), [(tmp_path / "a", QuantConfig.parse("fp32")),
                                                               (tmp_path / "b", QuantConfig.parse("int8"))])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "idefics3"])
def test_text_only_prompt_equals_transformers_generate(workspace, family):
    model = VisionLanguageModel.load(workspace.bundle(family, "fp32", "varied"))
    ids, processed = model.prepare(None, "Describe a red circle.")
    assert processed is None and model.special["image_token_id"] not in ids.tolist()
    result = model.generate_ids(ids, None, GenerationConfig(max_new_tokens=12))
    hf = get_family(family).load_model(workspace.checkpoint(family, "varied"))
    x = torch.from_numpy(ids)[None]
    with torch.no_grad():
        expected = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=12,
                               do_sample=False)[0, x.shape[1]:].tolist()
    assert result.token_ids == expected[:len(result.token_ids)]
    assert len(set(result.token_ids)) > 2
