"""Every registered dual-encoder family on ONNX: tiny-config export -> load -> run -> compare (the meta-test that
enforces a parity test per family and target is tests/test_layout.py)."""

from __future__ import annotations

import pytest

from pocketvlm.export.registry import families
from pocketvlm.export.verify.parity import dual_encoder_parity
from pocketvlm.runtime import DualEncoder, load_bundle
from tests.cases import DUAL_ENCODERS


@pytest.mark.parity("onnx")
@pytest.mark.parametrize("family", DUAL_ENCODERS)
def test_tiny_export_and_parity(workspace, photos, family):
    bundle_dir = workspace.bundle(family, "fp32")                 # export
    bundle = load_bundle(bundle_dir)                               # load (verifies every sha256)
    assert set(bundle.components) == {c.name for c in families()[family].components}
    subset = {k: photos[k] for k in ("astronaut", "coffee", "camera", "logo")}
    report = dual_encoder_parity(bundle_dir, workspace.checkpoint(family), photos=subset)  # run + compare
    tolerances = families()[family].tolerances  # the registry's thresholds, the ones parity judges by
    for name, row in report["components"].items():
        assert row["max_abs"] <= tolerances.limit("max_abs", "fp32", "onnx"), (name, row)
        assert row["cosine_min"] >= tolerances.limit("min_cosine", "fp32", "onnx", name), (name, row)
    assert report["preprocessing"]["pixel_values_max_abs"] <= tolerances.pixel_max_abs
    assert report["preprocessing"]["input_ids_equal"]
    assert report["zero_shot"]["top1_agreement"] >= tolerances.limit("min_top1_agreement", "fp32", "onnx")
    assert report["pass"], report["failed"]


@pytest.mark.parametrize("family", DUAL_ENCODERS)
def test_runtime_classify_and_embed(workspace, photos, family):
    model = DualEncoder.load(workspace.bundle(family, "fp32"))
    images = [photos["astronaut"], photos["coffee"]]
    embeds = model.embed_image(images)
    assert embeds.shape == (2, model.bundle.manifest["zero_shot"]["embed_dim"])
    assert abs(float((embeds**2).sum(-1).max()) - 1.0) < 1e-5
    preds = model.classify(images, ["a cat", "a dog", "a rocket"])
    assert [len(p) for p in preds] == [3, 3]
    scores = [p.score for p in preds[0]]
    assert scores == sorted(scores, reverse=True)
    if model.scoring.activation == "softmax":
        assert abs(sum(scores) - 1.0) < 1e-5
