"""--target executorch: every family lowered to XNNPACK ``.pte`` programs, run through ``executorch.runtime``,
compared with PyTorch.

export (torch.export -> to_edge_transform_and_lower -> to_executorch) -> load -> run through the runtime's
ExecuTorchSession (``executorch.runtime`` as its injected predictor) -> compare.
"""

from __future__ import annotations

import json
import os

import pytest

from pocketvlm.export.loop import export_bundle
from pocketvlm.export.quant.config import QuantConfig
from pocketvlm.export.registry import get_family
from pocketvlm.export.static_shapes import StaticShapes
from pocketvlm.export.verify.parity import dual_encoder_parity
from pocketvlm.export.verify.vlm_parity import vlm_parity
from pocketvlm.runtime import errors
from pocketvlm.runtime.backends import open_session
from pocketvlm.runtime.manifest import load_bundle
from pocketvlm.runtime.vlm import VisionLanguageModel
from tests.cases import DUAL_ENCODERS, VLM_FAMILIES
from tests.test_vlm import assert_chunked_greedy_equal, assert_passes, two_sizes

try:
    import executorch  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the ExecuTorch tests: .ci/run installs pocketvlm[dev] (executorch)") from None
    pytest.skip("executorch is not installed (pip install 'pocketvlm[executorch]')", allow_module_level=True)

# the LiteRT tests' shapes: prompts of ~30-140 tokens run as several chunks of at most 16 tokens (unpadded: the
# decoder's sequence is dynamic), then decode steps, over 256 cache slots; Qwen image sides a multiple of patch x merge
SHAPES = {"qwen3_vl": StaticShapes(prefill_length=16, kv_capacity=256, image_size=128)}
DEFAULT_SHAPES = StaticShapes(prefill_length=16, kv_capacity=256, image_size=112)
DELEGATION_KEYS = {"backend", "delegated_subgraphs", "delegated_nodes", "non_delegated_nodes", "delegated_share",
                   "non_delegated_ops"}


def executorch_bundle(workspace, family: str, size: str = "tiny"):
    return workspace.bundle(family, "fp32", size, target="executorch", shapes=SHAPES.get(family, DEFAULT_SHAPES))


def assert_delegation(component: dict) -> None:
    report = component["delegation"]
    assert set(report) == DELEGATION_KEYS and report["backend"] == "xnnpack"
    assert report["delegated_subgraphs"] >= 1 and 0 < report["delegated_share"] <= 1
    assert sum(report["non_delegated_ops"].values()) == report["non_delegated_nodes"]


@pytest.mark.parity("executorch")
@pytest.mark.parametrize("family", DUAL_ENCODERS)
def test_dual_encoder_fp32_matches_pytorch(workspace, photos, family):
    bundle_dir = executorch_bundle(workspace, family)
    bundle = load_bundle(bundle_dir)
    assert {spec.format for spec in bundle.components.values()} == {"pte"}
    for component in bundle.manifest["components"].values():
        assert_delegation(component)
        assert component["static"]["loop_inputs"]  # batch 1: the runtime loops over rows
    subset = {k: photos[k] for k in ("astronaut", "coffee", "camera", "logo")}  # 4 images: the batch-1 loop
    report = dual_encoder_parity(bundle_dir, workspace.checkpoint(family), photos=subset)
    for name, row in report["components"].items():
        assert row["max_abs"] <= get_family(family).tolerances.limit("max_abs", "fp32", "executorch", name), row
    assert report["zero_shot"]["top1_agreement"] == 1.0
    assert_passes(report)


@pytest.mark.parity("executorch")
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vlm_fp32_greedy_equals_pytorch_through_dynamic_prefill_and_decode(workspace, photos, family):
    bundle_dir = executorch_bundle(workspace, family, "varied")
    decoder = load_bundle(bundle_dir).manifest["components"]["text_decoder"]
    assert decoder["static"]["mutable_buffers"] == ["key_cache", "value_cache"]
    assert decoder["static"]["signatures"]["forward"]["input_ids"] == [1, 16]  # the upper bound of the sequence
    for component in load_bundle(bundle_dir).manifest["components"].values():
        assert_delegation(component)
    report = vlm_parity(bundle_dir, workspace.checkpoint(family, "varied"), photos=two_sizes(photos), steps=16)
    assert_chunked_greedy_equal(report)


def test_runtime_without_a_predictor_explains_where_a_pte_runs(workspace):
    bundle = load_bundle(executorch_bundle(workspace, "clip"))
    with pytest.raises(errors.BundleError, match="runs on the export side") as caught:
        open_session(bundle, "image_encoder")  # the runtime imports no torch, so it has no predictor of its own
    assert "pocketvlm parity" in caught.value.fix


def test_prompt_beyond_the_kv_capacity_is_refused(workspace, photos):
    from pocketvlm.export.targets.executorch.predictor import local_predictor
    from pocketvlm.runtime.generation import GenerationConfig

    model = VisionLanguageModel.load(executorch_bundle(workspace, "qwen2_vl", "varied"), predictor=local_predictor())
    with pytest.raises(errors.InputError, match="KV capacity of 256"):
        model.generate(photos["coffee"], "describe " * 120, GenerationConfig(max_new_tokens=4))


def test_unsupported_requests_are_refused_by_name(workspace, tmp_path, capsys):
    from pocketvlm.cli.main import main

    checkpoint = workspace.checkpoint("clip")
    with pytest.raises(errors.QuantizationError, match=r"int8 \(image_encoder\) is not available for --target "
                                                       "executorch"):
        export_bundle(checkpoint, tmp_path / "out", target="executorch", quant=QuantConfig.parse("int8"))
    with pytest.raises(errors.ExportError, match="--mediapipe is not available for --target executorch"):
        export_bundle(checkpoint, tmp_path / "out", target="executorch", mediapipe="image_encoder")
    with pytest.raises(errors.ExportError, match="image_size 100 is not a multiple of 28"):
        export_bundle(workspace.checkpoint("qwen2_vl"), tmp_path / "out", target="executorch",
                      shapes=StaticShapes(image_size=100))
    config = tmp_path / "q.json"
    config.write_text(json.dumps({"default": {"method": "fp32", "block_size": 64}}))
    with pytest.raises(errors.QuantizationError, match="'block_size' is not available for --target executorch"):
        export_bundle(checkpoint, tmp_path / "out", target="executorch", quant=QuantConfig.parse(str(config)))
    code = main(["export", "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--target", "executorch",
                 "--quant", "int4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--target executorch" in err[0], err
    assert not (tmp_path / "out").exists()
