"""--split-vision: every family's vision split point, on every target.

Per (family with a split point, target): the target converts the unsplit vision component and both split stages ->
copies them at its unquantized precision -> the exporter's manifest builder records them -> the runtime opens each
as a session -> the stages run chained, and the unsplit component alone, on the runtime's own preprocessing of real
photos -> compare (the registry's ``split_chain_max_abs``). Only the vision side is converted here (the export loop
would convert every text tower and decoder too); the VLMs on ONNX go through the whole loop in test_vlm.py. Whole
split bundles go through the export loop below, one per target, and run through the runtime and the CLI unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from pocketvlm.export.bundle_writer import build_manifest
from pocketvlm.export.checkpoint import read_checkpoint
from pocketvlm.export.families.vision_split import component_def, export_components
from pocketvlm.export.quant.config import QuantConfig, QuantSpec
from pocketvlm.export.registry import families, get_family
from pocketvlm.export.targets.base import ExportContext, ExportOptions
from pocketvlm.export.targets.registry import TARGETS
from pocketvlm.runtime import errors
from pocketvlm.runtime.backends import open_session
from pocketvlm.runtime.image import ImagePreprocess
from pocketvlm.runtime.manifest import bundle_from_manifest, load_bundle
from pocketvlm.runtime.vlm import ADAPTERS
from tests.cases import SPLIT_FAMILIES
from tests.test_tflite import DEFAULT_SHAPES, SHAPES
from tests.test_vlm import assert_passes, two_sizes

# the targets whose artifacts run here as they would on a phone, fp32 or (Core ML, through its reference evaluator)
# fp16; qnn compiles each graph per SoC for the HTP emulator in child processes and has its own suite (test_qnn.py).
# test_vlm.py's split test also takes two VLMs (Idefics3's own split point, Qwen3-VL's deepstack) through the whole
# export loop, with generation.
CHECKED_TARGETS = tuple(name for name in TARGETS if name != "qnn")
PAIRS = [(family, target) for family in SPLIT_FAMILIES for target in CHECKED_TARGETS]


def checkpoint_size(family: str, target: str) -> str:
    """The suite's checkpoints: dual encoders 'tiny'; VLMs 'varied' (the one whose greedy tokens the suite compares),
    'fp16' on Core ML (the 0.5 init overflows fp16 activations)."""
    if get_family(family).task == "zero_shot_image_classification":
        return "tiny"
    return "fp16" if target == "coreml" else "varied"


@dataclasses.dataclass
class VisionSide:
    """One (family, target) pair's vision components as the runtime opens them, and the runtime's feeds of photos."""

    manifest: dict
    sessions: dict
    feeds: list


def convert_vision_side(workspace, photos: dict, family: str, target_name: str) -> VisionSide:
    """The target's protocol, as the export loop drives it, over the vision side only: prepare -> convert ->
    quantize at the unquantized precision -> describe -> the manifest (with its split report) -> runtime sessions."""
    spec, target = get_family(family), TARGETS[target_name]
    checkpoint = workspace.checkpoint(family, checkpoint_size(family, target_name))
    root = workspace.root / f"vision-side-{family}-{target_name}"
    staging, scratch = root / "bundle", root / "scratch"
    staging.mkdir(parents=True)
    scratch.mkdir()
    model = spec.load_model(checkpoint)
    metadata = spec.bundle_metadata(model, checkpoint, staging)
    options = ExportOptions(shapes=SHAPES.get(family, DEFAULT_SHAPES), isolate=False, split_vision=True)
    ctx = ExportContext(read_checkpoint(checkpoint), spec, options, model, model.config, [metadata], scratch)
    target.prepare(ctx)
    point, quant = spec.vision_split, QuantSpec(method=target.precision)
    records = {}
    for name in (point.component, *point.stages):
        comp = component_def(spec, name)
        target.convert(ctx, comp)
        dest = staging / f"{name}{target.suffix}"
        records[name] = target.describe(ctx, comp, quant, dest, 0, target.quantize(ctx, comp, quant, dest, None))
    manifest = build_manifest(ctx.checkpoint, spec, QuantConfig(quant), target.name, model.config, metadata,
                              records, staging)
    bundle = bundle_from_manifest(staging, manifest)
    sessions = {name: open_session(bundle, name, predictor=target.predictor()) for name in records}
    return VisionSide(manifest, sessions, runtime_feeds(metadata, photos))


def runtime_feeds(metadata: dict, photos: dict) -> list[dict[str, np.ndarray]]:
    """The runtime's feeds of the vision component: a batch of two images (dual encoders), or one image each
    (VLMs: square and non-square, so Idefics3 runs 17 and 13 tiles)."""
    image = metadata["preprocessing"]["image"]
    if metadata["task"] == "zero_shot_image_classification":
        return [{"pixel_values": ImagePreprocess.from_json(image).batch([photos["astronaut"], photos["coffee"]])}]
    adapter = ADAPTERS[image["kind"]](image, metadata["special_tokens"])
    return [adapter.vision_feeds(adapter.preprocess(picture)) for picture in two_sizes(photos).values()]


@pytest.fixture(scope="module")
def vision_sides(workspace, photos):
    cache: dict[tuple[str, str], VisionSide] = {}

    def get(family: str, target: str) -> VisionSide:
        if (family, target) not in cache:
            cache[family, target] = convert_vision_side(workspace, photos, family, target)
        return cache[family, target]

    return get


# -- the registry ------------------------------------------------------------------------------------------------------
def test_every_family_offers_its_split_on_every_target():
    """The refusal is gone: every registered family declares a split point, every target offers the split, and the
    stages replace exactly the split component."""
    assert set(SPLIT_FAMILIES) == set(families())
    assert all(target.splits_vision for target in TARGETS.values())
    for family in SPLIT_FAMILIES:
        spec = get_family(family)
        point = spec.vision_split
        names = [c.name for c in export_components(spec, split_vision=True)]
        whole = [c.name for c in spec.components]
        at = whole.index(point.component)
        assert names == [*whole[:at], *point.stages, *whole[at + 1:]], family


def test_a_family_without_a_split_point_is_refused_by_name(workspace, tmp_path, monkeypatch):
    from pocketvlm.export import loop

    bare = dataclasses.replace(get_family("siglip"), vision_split=None)
    with pytest.raises(errors.UnsupportedModelError, match="family siglip has no vision split point"):
        export_components(bare, split_vision=True)
    monkeypatch.setattr(loop, "family_for_model_type", lambda model_type: bare)
    with pytest.raises(errors.UnsupportedModelError, match="family siglip has no vision split point"):
        loop.export_bundle(workspace.checkpoint("siglip"), tmp_path / "b", split_vision=True)
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("family", SPLIT_FAMILIES)
def test_stages_chain_to_the_unsplit_wrapper_in_torch(family):
    """Before any target: the two export wrappers chained equal the unsplit one on its example inputs."""
    import torch

    spec = get_family(family)
    point = spec.vision_split
    config = spec.tiny_config()
    torch.manual_seed(0)
    model = spec.from_config(config).eval()
    whole = spec.component(point.component)
    frontend, transformer = (component_def(spec, name) for name in point.stages)
    feeds = whole.example_inputs(config)
    with torch.no_grad():
        expected = whole.wrap(model)(*feeds.values())
        hidden = frontend.wrap(model)(*frontend.stage_feeds(config, feeds).values())
        rest = transformer.stage_feeds(config, feeds)
        got = transformer.wrap(model)(*{**rest, "vision_hidden": hidden}.values())
    assert list(hidden.shape) == [feeds["pixel_values"].shape[0] if isinstance(d, str) else d
                                  for d in point.hidden_shape(config)]
    expected, got = (x if isinstance(x, tuple) else (x,) for x in (expected, got))
    for ref, out in zip(expected, got, strict=True):
        assert torch.equal(ref, out), (family, float((ref - out).abs().max()))


# -- every family on every target --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "target"), PAIRS)
def test_chained_stages_equal_the_unsplit_encoder(vision_sides, family, target):
    side = vision_sides(family, target)
    point = get_family(family).vision_split
    frontend, transformer = (side.sessions[name] for name in point.stages)
    whole = side.sessions[point.component]
    limit = get_family(family).tolerances.split_chain_max_abs
    for feeds in side.feeds:
        hidden = frontend.run(feeds)["vision_hidden"]
        got = transformer.run({**feeds, "vision_hidden": hidden})
        expected = whole.run(feeds)
        assert got.keys() == expected.keys()
        for name in expected:
            error = float(np.abs(got[name] - expected[name]).max())
            print(f"{family} {target} {name}: chained vs unsplit max abs {error:.3g}")
            assert error <= limit, (name, error)
    if target != "onnx":  # static shapes: the transformer loops over images / tiles where the unsplit encoder does
        loops = side.manifest["vision_split"]["interface"]["shape"][0] in ("batch", "tiles")
        stage = side.manifest["components"][point.stages[1]]["static"]
        assert ("vision_hidden" in stage["loop_inputs"]) is loops, stage


@pytest.mark.parametrize("family", SPLIT_FAMILIES)
def test_split_report_numbers(vision_sides, family):
    """The manifest's record of what crosses the boundary: its interface is the tensor the frontend really emits, and
    its bytes per image are this tiny config's sizes (the family's fixed input; Idefics3 one tile and the most tiles
    the runtime makes of one image; Qwen square images at 224 / 448 / 896 px)."""
    from PIL import Image

    side = vision_sides(family, "tflite")
    report, config = side.manifest["vision_split"], get_family(family).tiny_config()
    point, vc = get_family(family).vision_split, config.vision_config
    width, patch = int(getattr(vc, "embed_dim", None) or vc.hidden_size), vc.patch_size
    assert report["boundary"] == " -> ".join(point.stages) and set(report["stages"]) == set(point.stages)
    interface, images = report["interface"], report["bytes_per_image"]
    assert interface["name"] == "vision_hidden" and interface["dtype"] == "float32"
    assert interface["mask"] is None and interface["mask_crosses"] is False  # no family's encoder takes a mask
    assert report["bytes_per_patch"] == {"float32": 4 * width, "float16": 2 * width, "int8": width}
    frontend = side.sessions[point.stages[0]]
    for feeds in side.feeds:  # the declared shape, its symbolic dims bound by the feeds, is the real one
        hidden = frontend.run(feeds)["vision_hidden"]
        whole = side.manifest["components"][point.component]["inputs"]
        sizes = {d: feeds[t["name"]].shape[axis] for t in whole for axis, d in enumerate(t["shape"])
                 if isinstance(d, str)}
        assert list(hidden.shape) == [sizes.get(d, d) for d in interface["shape"]]
    for example in images.values():
        rows = math.prod(example["shape"][:-1])
        assert example["patches"] + example["class_tokens"] == rows
        assert (example["float32"], example["float16"], example["int8"]) == (4 * rows * width, 2 * rows * width,
                                                                             rows * width)
    kind = interface["shape"][0]
    if kind == "batch":  # a fixed input size: one image is the grid of patches, after the class token if any
        grid = (vc.image_size // patch) ** 2
        assert interface["class_token"] is (hidden.shape[1] == grid + 1)
        tokens = grid + int(interface["class_token"])
        assert images == {f"{vc.image_size}x{vc.image_size}": {
            "shape": [1, tokens, width], "patches": grid, "class_tokens": tokens - grid,
            "float32": 4 * tokens * width, "float16": 2 * tokens * width, "int8": tokens * width}}
    elif kind == "tiles":  # one tile, and the runtime's tiles of the largest image (square, at the longest edge)
        image = side.manifest["preprocessing"]["image"]
        adapter = ADAPTERS[image["kind"]](image, side.manifest["special_tokens"])
        most = adapter.preprocess(Image.new("RGB", (4096, 4096))).pixel_values.shape[0]
        grid = (vc.image_size // patch) ** 2
        assert images["per_tile"]["shape"] == [1, grid, width]
        assert images["max_tiles"]["shape"] == [most, grid, width] and most > 1
        assert images["max_tiles"]["float16"] == most * grid * width * 2
    else:  # one image per call: its patch rows
        assert kind == "patches" and interface["class_token"] is False
        for side_px in (224, 448, 896):
            example = images[f"{side_px}x{side_px}"]
            assert example["patches"] == (side_px // patch) ** 2
            assert example["float16"] == (side_px // patch) ** 2 * width * 2


# -- whole split bundles through the export loop and the runtime -------------------------------------------------------
def test_split_clip_bundle_runs_classify_embed_and_selftest(workspace, photos, vision_sides, tmp_path, capsys):
    from pocketvlm.cli.main import main

    bundle = workspace.bundle("clip", "fp32", "tiny", split_vision=True)
    manifest = load_bundle(bundle).manifest
    assert {"image_frontend", "image_transformer", "text_encoder"} == set(manifest["components"])
    assert manifest["golden"]["stages"][1] == "image_encoder"  # recorded through the chained stages
    image = tmp_path / "astronaut.png"
    photos["astronaut"].save(image)
    assert main(["embed", "--bundle", str(bundle), "--image", str(image), "--out", str(tmp_path / "e.npy")]) == 0
    capsys.readouterr()
    side = vision_sides("clip", "onnx")
    pixels = ImagePreprocess.from_json(manifest["preprocessing"]["image"]).batch([photos["astronaut"]])
    unsplit = side.sessions["image_encoder"].run({"pixel_values": pixels})["image_embeds"]
    unsplit /= np.linalg.norm(unsplit, axis=-1, keepdims=True)
    assert np.abs(np.load(tmp_path / "e.npy") - unsplit).max() <= get_family("clip").tolerances.split_chain_max_abs
    assert main(["classify", "--bundle", str(bundle), "--image", str(image), "--labels", "a cat,a dog",
                 "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert abs(sum(p["score"] for p in row["predictions"]) - 1.0) < 1e-5
    assert main(["selftest", "--bundle", str(bundle)]) == 0
    assert "self-test PASS" in capsys.readouterr().out


def test_split_idefics3_litert_bundle_generates_as_transformers(workspace, photos, tmp_path, capsys):
    from pocketvlm.cli.main import main
    from pocketvlm.export.verify.vlm_parity import vlm_parity

    bundle = workspace.bundle("idefics3", "fp32", "varied", target="tflite", shapes=DEFAULT_SHAPES, split_vision=True)
    manifest = load_bundle(bundle).manifest
    assert manifest["vision_split"]["boundary"] == "vision_frontend -> vision_transformer"
    report = vlm_parity(bundle, workspace.checkpoint("idefics3", "varied"), photos=two_sizes(photos), steps=8)
    for row in report["photos"]:
        assert row["greedy"]["equal"], row["greedy"]
    assert_passes(report)
    image = tmp_path / "coffee.png"
    photos["coffee"].resize((150, 100)).save(image)
    assert main(["caption", "--bundle", str(bundle), "--image", str(image), "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()


def test_split_siglip_core_ml_bundle_embeds_as_the_unsplit(workspace, photos, vision_sides):
    from pocketvlm.export.targets.coreml.check import load_runner
    from pocketvlm.runtime.dual_encoder import StagedSession
    from pocketvlm.runtime.selftest import selftest

    bundle = workspace.bundle("siglip", "fp16", "tiny", target="coreml", shapes=DEFAULT_SHAPES, isolate=False,
                              split_vision=True)
    runner = load_runner(bundle)
    assert isinstance(runner.sessions["image_encoder"], StagedSession)
    assert set(runner.sessions["image_encoder"].stages) == {"image_frontend", "image_transformer"}
    images = [photos["astronaut"], photos["coffee"], photos["camera"]]  # three rows through the batch-1 packages
    unsplit = vision_sides("siglip", "coreml").sessions["image_encoder"].run(
        {"pixel_values": runner.pixel_values(images)})["image_embeds"]
    error = float(np.abs(runner.image_features(images) - unsplit).max())
    assert error <= get_family("siglip").tolerances.split_chain_max_abs, error
    assert all(result.passed for result in selftest(runner))


def test_the_isolated_core_ml_child_finds_split_stages():
    """A Core ML conversion in its own process looks its component up by name: split stages included."""
    for family in SPLIT_FAMILIES:
        spec = get_family(family)
        for name in spec.vision_split.stages:
            assert component_def(spec, name).name == name
    with pytest.raises(errors.ExportError, match="no component or split stage 'nope'"):
        component_def(get_family("clip"), "nope")

