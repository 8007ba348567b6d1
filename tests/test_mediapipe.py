"""--target tflite --mediapipe: the MediaPipe Tasks variant of a CLIP / SigLIP image tower, run by MediaPipe's own
ImageEmbedder (PyPI mediapipe 1.2.2) and compared with the bundle's LiteRT path (pocketvlm's preprocessing).

refuse what MediaPipe cannot run -> export -> read the TFLite metadata back with MediaPipe's schema -> pin
MediaPipe's sampling grid -> run ImageEmbedder -> compare per photo and by zero-shot accuracy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pocketvlm.demo import run as demo
from pocketvlm.demo.shapes.data import load_split
from pocketvlm.demo.shapes.shapes_clip import ZERO_SHOT_LABELS
from pocketvlm.export.hf_quiet import quiet_tool
from pocketvlm.export.loop import export_bundle, export_bundles
from pocketvlm.export.quant.config import QuantConfig, QuantSpec
from pocketvlm.export.targets.tflite import mediapipe as variant
from pocketvlm.export.targets.tflite.resample import pil_resize_module
from pocketvlm.export.targets.tflite.tflite_metadata import image_model_metadata, read_metadata, with_metadata
from pocketvlm.export.verify.mediapipe_check import MediaPipeEmbedder, _mediapipe, photo_cosines, zero_shot
from pocketvlm.runtime.errors import BundleError, ExportError
from pocketvlm.runtime.image import RESAMPLE, ImagePreprocess
from pocketvlm.runtime.manifest import load_bundle, sha256_file
from tests.cases import DUAL_ENCODERS
from tests.test_errors import assert_one_line_error

ASKED = ("image_encoder",)


# --- what is refused, before anything is written ---------------------------------------------------------------

@pytest.mark.parametrize(("target", "family", "options", "needle"), [
    ("onnx", "clip", {}, "--mediapipe is not available for --target onnx"),
    ("tflite", "qwen2_vl", {}, "byte-level BPE"),
    ("tflite", "clip", {"mediapipe": ("text_encoder",)}, "no byte-level BPE tokenizer"),
    ("tflite", "clip", {"split_vision": True}, "not a --split-vision stage"),
    ("tflite", "siglip", {"mediapipe_scale": 9}, "outside 1..8"),
])
def test_refusals_name_why(tmp_path, workspace, target, family, options, needle):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=re.escape(needle)) as caught:
        export_bundle(workspace.checkpoint(family), out, target=target, **{"mediapipe": ASKED, **options})
    assert "\n" not in str(caught.value) and caught.value.fix
    assert not out.exists()


def test_gptq_image_tower_is_refused(tmp_path, workspace):
    quant = QuantConfig(QuantSpec(method="int4"), {"image_encoder": QuantSpec(method="int4", gptq=True)})
    with pytest.raises(ExportError, match="GPTQ for image_encoder with --mediapipe"):
        export_bundle(workspace.checkpoint("clip"), tmp_path / "out", target="tflite", quant=quant, mediapipe=ASKED)


def test_cli_refusals_are_one_line(tmp_path, capsys, workspace):
    model, out = str(workspace.checkpoint("clip")), str(tmp_path / "out")
    base = ["export", "--model", model, "--out", out]
    assert_one_line_error(capsys, [*base, "--mediapipe"], "--mediapipe is not available for --target onnx")
    assert_one_line_error(capsys, [*base, "--target", "tflite", "--mediapipe", "text_encoder"], "byte-level BPE")
    assert_one_line_error(capsys, [*base, "--target", "tflite", "--mediapipe-scale", "4"], "without --mediapipe")
    assert not Path(out).exists()


# --- the pieces: in-graph resize, MediaPipe's sampling grid, the metadata ----------------------------------------

def smooth(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A smooth image over [0, 1]^2 (0..255), so that where it is sampled matters and how densely hardly."""
    return (120 + 50 * np.sin(2 * np.pi * (1.3 * u + 0.2))[None, :] * np.cos(2 * np.pi * (0.9 * v - 0.1))[:, None]
            + 30 * np.cos(2 * np.pi * 2.7 * u)[None, :]).astype(np.float32)


@pytest.mark.parametrize("resample", ["bicubic", "bilinear", "lanczos"])
def test_graph_resize_from_mediapipes_grid_is_pils(resample):
    """PIL's resize of an image sampled at pixel centres (pocketvlm) equals the graph's resize of the same image
    sampled on the variant's grid (j + 1) / N; read as pixel centres of its own, that grid is half a step off."""
    import torch

    size, factor, source = 16, 4, 97
    centres = (np.arange(source) + 0.5) / source
    pil = np.asarray(Image.fromarray(smooth(centres, centres), mode="F").resize((size, size), RESAMPLE[resample]))
    resize = pil_resize_module(resample, factor, size, size)
    samples = factor * size - 1

    def graph(u: np.ndarray) -> np.ndarray:
        return resize(torch.from_numpy(smooth(u, u))[None, None])[0, 0].numpy()

    inner = (slice(2, -2), slice(2, -2))  # at the borders PIL's taps reach pixels the grid has no sample near
    on_grid = np.abs(graph((np.arange(samples) + 1) / (factor * size)) - pil)[inner].max()
    off_grid = np.abs(graph((np.arange(samples) + 0.5) / samples) - pil)[inner].max()
    assert on_grid < 0.5 < 2.0 < off_grid, (on_grid, off_grid)


@pytest.fixture(scope="module")
def probe_model(tmp_path_factory) -> Path:
    """A 15 x 15 'embedder' whose embedding is its input: MediaPipe's own resized tensor, read back."""
    import litert_torch
    import torch

    class Identity(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return image.reshape(1, -1) * 1.0

    root = tmp_path_factory.mktemp("probe")
    with quiet_tool():  # litert-torch's own deprecation warnings, as in the exporter
        converter = litert_torch.Converter()
        converter.signature("probe", Identity().eval(), sample_kwargs={"image": torch.zeros(1, 15, 15, 3)})
        converter.convert().export(str(root / "plain.tflite"))
    metadata = image_model_metadata("probe", "identity", ("image", "RGB"), 0.0, 255.0, ("pixels", "the input"))
    with_metadata(root / "plain.tflite", root / "probe.tflite", metadata)
    return root / "probe.tflite"


def test_region_of_interest_puts_mediapipes_samples_on_the_grid(probe_model):
    """The rule of ``roi_rect`` for a 64-px-style CLIP crop at scale 4 (here a 4 px tower: N = 16, S = 15): sample j
    of MediaPipe's resize falls at (j + 1) / N of pocketvlm's crop window, on both axes, for a non-square image."""
    api = _mediapipe()
    width, height = 120, 90
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, :, 0] = 2 * np.arange(width)[None, :]  # a ramp per axis: bilinear sampling reads positions back
    pixels[:, :, 1] = 2 * np.arange(height)[:, None]
    preprocess = ImagePreprocess({"shortest_edge": 4}, "bicubic", {"height": 4, "width": 4}, 1 / 255, (0.0,) * 3,
                                 (1.0,) * 3)
    rect = variant.roi_rect(preprocess, 4, width, height)
    x0, y0, x1, y1 = variant.crop_window(preprocess, width, height)
    task = api.vision.ImageEmbedder.create_from_options(api.vision.ImageEmbedderOptions(
        base_options=api.BaseOptions(model_asset_path=str(probe_model)), l2_normalize=False))
    try:
        result = task.embed(api.mp.Image(image_format=api.mp.ImageFormat.SRGB, data=pixels),
                            api.ImageProcessingOptions(region_of_interest=api.RectF(**rect)))
    finally:
        task.close()
    seen = np.asarray(result.embeddings[0].embedding).reshape(15, 15, 3) * 255
    grid = (np.arange(15) + 1) / 16
    expected_x, expected_y = x0 + grid * (x1 - x0) - 0.5, y0 + grid * (y1 - y0) - 0.5  # pixel indices
    assert np.abs(seen[0, :, 0] / 2 - expected_x).max() <= 0.26  # MediaPipe rounds to 8 bits: half a level
    assert np.abs(seen[:, 0, 1] / 2 - expected_y).max() <= 0.26
    assert rect["left"] > 0 and rect["top"] > 0 and rect["right"] < 1 and rect["bottom"] < 1


def test_metadata_reads_back_with_mediapipes_schema(probe_model):
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    buffer = read_metadata(probe_model)
    assert buffer is not None and schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
    metadata = schema.ModelMetadataT.InitFromPackedBuf(buffer, 0)
    tensor = metadata.subgraphMetadata[0].inputTensorMetadata[0]
    assert tensor.content.contentPropertiesType == schema.ContentProperties.ImageProperties
    assert tensor.content.contentProperties.colorSpace == schema.ColorSpaceType.RGB
    unit = tensor.processUnits[0]
    assert unit.optionsType == schema.ProcessUnitOptions.NormalizationOptions
    assert (list(unit.options.mean), list(unit.options.std)) == ([0.0], [255.0])
    assert (list(tensor.stats.min), list(tensor.stats.max)) == ([0.0], [1.0])
    output = metadata.subgraphMetadata[0].outputTensorMetadata[0]
    assert output.name == b"pixels"
    assert output.content.contentPropertiesType == schema.ContentProperties.FeatureProperties
    assert metadata.minParserVersion == b"1.0.0"


# --- tiny CLIP and SigLIP: the bundle's record, and MediaPipe running the variant ---------------------------------

def assert_variant_matches(bundle_dir: Path, photos: dict, min_cosine: float) -> dict:
    manifest = load_bundle(bundle_dir).manifest  # every listed file's sha256 checked, the variant's included
    record = manifest["components"]["image_encoder"]["mediapipe"]
    listed = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    assert listed[record["file"]] == record["sha256"] == sha256_file(bundle_dir / record["file"])
    assert record["quantization"] == manifest["components"]["image_encoder"]["quantization"]
    cosines = photo_cosines(bundle_dir, photos)
    assert min(cosines.values()) >= min_cosine, cosines
    return record


@pytest.mark.parametrize("family", DUAL_ENCODERS)
def test_tiny_variant_runs_in_mediapipe(workspace, photos, family):
    from ai_edge_litert.interpreter import Interpreter

    bundle_dir = workspace.bundle(family, target="tflite", mediapipe=ASKED)
    subset = {k: photos[k] for k in ("astronaut", "coffee", "page", "logo")}  # square, wide, RGBA
    record = assert_variant_matches(bundle_dir, subset, 0.9995)  # random towers are smooth: measured >= 0.99993
    side = record["input"]["shape"][1]
    assert record["input"]["shape"] == [1, side, side, 3] and record["in_graph"]["scale"] == 8
    manifest = load_bundle(bundle_dir).manifest
    assert record["region_of_interest"]["window"] == ("crop" if manifest["preprocessing"]["image"]["center_crop"]
                                                      else "whole_image")
    interpreter = Interpreter(model_path=str(bundle_dir / record["file"]))
    (detail,) = interpreter.get_input_details()
    assert list(detail["shape"]) == record["input"]["shape"] and detail["dtype"] == np.float32
    assert "image_encoder.tflite" in {entry["path"] for entry in manifest["files"]}  # the bundle's own is kept


def test_quantized_variants_follow_the_bundle(workspace, photos):
    subset = {k: photos[k] for k in ("astronaut", "coffee")}
    for quant, min_cosine in (("int8", 0.999), ("int4", 0.998)):  # measured >= 0.99992 on all 16 photos
        bundle_dir = workspace.bundle("clip", quant, target="tflite", mediapipe=ASKED)
        assert assert_variant_matches(bundle_dir, subset, min_cosine)["quantization"]["method"] == quant


# --- the acceptance figure: the shapes CLIP on the test photos and the shapes test split --------------------------

@pytest.fixture(scope="module")
def shapes_bundle(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("shapes-mediapipe")
    checkpoint = demo.model_checkpoint(cache, "shapes-clip", lambda message: None)
    return export_bundles(checkpoint, [(cache / "tflite-fp32", QuantConfig.parse("fp32"))], target="tflite",
                          mediapipe=ASKED)[0]


def test_shapes_clip_in_mediapipe_agrees_with_pocketvlm(shapes_bundle, photos):
    cosines = photo_cosines(shapes_bundle, photos)
    assert len(cosines) == 16 and min(cosines.values()) >= 0.999, cosines
    samples = load_split("test")[:int(os.environ.get("POCKETVLM_MEDIAPIPE_IMAGES", "60"))]
    scores = zero_shot(shapes_bundle, [s.image() for s in samples], [f"a {s.label}" for s in samples],
                       ZERO_SHOT_LABELS)
    assert scores["top1_agreement"] >= 0.98 and scores["mediapipe_accuracy"] >= 0.95, scores
    record = json.loads((shapes_bundle / "manifest.json").read_text())["components"]["image_encoder"]["mediapipe"]
    assert record["input"]["shape"] == [1, 511, 511, 3]  # 8 x 64 - 1


def test_embedder_refuses_a_bundle_without_the_variant(workspace, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(workspace.bundle("siglip", target="tflite", mediapipe=ASKED), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["components"]["image_encoder"]["mediapipe"]  # as an export without --mediapipe writes it
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no MediaPipe variant"):
        MediaPipeEmbedder(copy)


def test_a_tampered_variant_is_refused_at_load(shapes_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(shapes_bundle, copy)
    with open(copy / variant.FILE, "r+b") as handle:
        handle.seek(200)
        handle.write(b"\x01")
    with pytest.raises(BundleError, match="does not match its sha256"):
        MediaPipeEmbedder(copy)
