"""Acceptance of the spine on medium random-weight configs (hidden 256, 4 layers) and the real skimage photos:
fp32 ONNX vs PyTorch within the registered max abs (1e-4), int8 / int4 image-embedding cosine at the registered
limits (0.99, 0.98; ``dual_encoder.TOLERANCES``), int8 bundle <= 0.3x fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketvlm.export.registry import get_family
from pocketvlm.export.verify.parity import Comparison, dual_encoder_parity
from pocketvlm.runtime import DualEncoder, load_bundle

FAMILIES = ("clip", "siglip")


def _reference_image_embeds(workspace, family, photos):
    spec = get_family(family)
    checkpoint = workspace.checkpoint(family, "medium")
    model = spec.load_model(checkpoint)
    runner = DualEncoder.load(workspace.bundle(family, "fp32", "medium"))
    pixels = runner.pixel_values(list(photos.values()))
    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.from_numpy(pixels))
    return pixels, out.pooler_output.numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_matches_pytorch_within_1e4(workspace, photos, family):
    report = dual_encoder_parity(workspace.bundle(family, "fp32", "medium"), workspace.checkpoint(family, "medium"),
                                 photos=photos)
    tolerances = get_family(family).tolerances
    for name in ("image_encoder", "text_encoder"):
        assert report["components"][name]["max_abs"] <= tolerances.limit("max_abs", "fp32", "onnx", name), \
            report["components"][name]
    assert report["zero_shot"]["top1_agreement"] >= tolerances.limit("min_top1_agreement", "fp32", "onnx")
    assert report["pass"], report["failed"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_image_embeddings_cosine(workspace, photos, family, quant):
    min_cosine = get_family(family).tolerances.limit("min_cosine", quant, "onnx", "image_encoder")
    pixels, reference = _reference_image_embeds(workspace, family, photos)
    runner = DualEncoder.load(workspace.bundle(family, quant, "medium"))
    got = runner.sessions["image_encoder"].run({"pixel_values": pixels})["image_embeds"]
    comparison = Comparison.of(reference, got)
    assert comparison.cosine_min >= min_cosine, comparison


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_bundle_is_under_a_third_of_fp32(workspace, family):
    fp32 = load_bundle(workspace.bundle(family, "fp32", "medium")).total_bytes
    int8 = load_bundle(workspace.bundle(family, "int8", "medium")).total_bytes
    assert int8 <= 0.3 * fp32, (int8, fp32, int8 / fp32)


def test_quantization_is_recorded_per_component(workspace):
    bundle = load_bundle(workspace.bundle("clip", "int4", "medium"))
    for spec in bundle.components.values():
        assert spec.quantization["method"] == "int4"
        assert spec.quantization["block_size"] == 32
    assert bundle.manifest["quantization"]["default"]["method"] == "int4"


def test_mixed_per_component_quantization(workspace, tmp_path):
    from pocketvlm.export.loop import export_bundle
    from pocketvlm.export.quant.config import QuantConfig

    quant = QuantConfig.parse("int8,text_encoder=int4")
    out = export_bundle(workspace.checkpoint("clip"), tmp_path / "mixed", quant=quant)
    bundle = load_bundle(out)
    assert bundle.component("image_encoder").quantization["method"] == "int8"
    assert bundle.component("text_encoder").quantization["method"] == "int4"
    assert np.isfinite(DualEncoder.load(out).embed_text(["a cat"])).all()
