"""Several bundles from one load and one fp32 graph export; text-only prompts through a VLM bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketvlm.export import loop as pipeline
from pocketvlm.export.quant.calibration import FeedRecorder
from pocketvlm.export.quant.config import QuantConfig, QuantSpec
from pocketvlm.export.registry import get_family
from pocketvlm.export.targets.onnx import target as onnx_target
from pocketvlm.export.verify.vlm_parity import vlm_parity
from pocketvlm.runtime.dual_encoder import DualEncoder
from pocketvlm.runtime.errors import ExportError, QuantizationError
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
    real, calls = onnx_target.quantize_file, []

    def interrupt_later(src, dst, spec, hessians=None):
        calls.append(dst)
        if len(calls) == 3:  # the second bundle's first component
            raise KeyboardInterrupt
        real(src, dst, spec, hessians)

    monkeypatch.setattr(onnx_target, "quantize_file", interrupt_later)
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


def test_gptq_int4_is_calibrated_on_recorded_feeds_and_recorded(workspace, photos, tmp_path):
    """GPTQ needs calibration feeds (refused before anything is written without them); with feeds recorded from
    the fp32 bundle on two photos, the int4 decoder it writes follows the model on a third, held-out one."""
    checkpoint = workspace.checkpoint("idefics3", "standard")
    gptq = QuantConfig(QuantSpec(method="int4"),
                       {"text_decoder": QuantSpec(method="int4", symmetric=False, gptq=True)})
    with pytest.raises(QuantizationError, match="calibration"):
        pipeline.export_bundles(checkpoint, [(tmp_path / "refused", gptq)])
    assert list(tmp_path.iterdir()) == []
    fp32 = VisionLanguageModel.load(workspace.bundle("idefics3", "fp32", "standard"))
    recorder = FeedRecorder(fp32.sessions["text_decoder"])
    fp32.sessions["text_decoder"] = recorder
    for name in ("coffee", "camera"):
        fp32.generate(photos[name].resize((140, 140)), "Describe this image.", GenerationConfig(max_new_tokens=8))
    assert len(recorder.feeds) == 16 and recorder.feeds[0]["input_ids"].shape[1] > 1  # prefill, then decode steps
    messages: list[str] = []
    out = pipeline.export_bundles(checkpoint, [(tmp_path / "gptq", gptq)],
                                  calibration={"text_decoder": recorder.feeds}, progress=messages.append)[0]
    steps = [m.split("]")[0][1:].split("/") for m in messages if m.startswith("[")]
    assert steps[-1][0] == steps[-1][1] and any("Hessians of text_decoder" in m for m in messages), messages
    record = load_bundle(out).manifest["components"]["text_decoder"]["quantization"]
    assert record["gptq"] is True and record["symmetric"] is False and "GPTQ" in record["weights"]
    report = vlm_parity(out, checkpoint, photos={"astronaut": photos["astronaut"].resize((140, 140))}, steps=16)
    floor = get_family("idefics3").tolerances.limit("logits_min_cosine", "int4", "onnx")
    assert min(report["photos"][0]["logits"]["per_step_cosine"]) >= floor, report["photos"][0]["logits"]
