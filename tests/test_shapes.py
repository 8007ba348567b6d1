"""The embedded default models trained here (issue 4): data labels, committed weights, export and accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pocketvlm.demo import run as demo
from pocketvlm.demo.shapes import captioner, shapes_clip
from pocketvlm.demo.shapes.data import LABELS, load_split
from pocketvlm.demo.shapes.evaluate import (
    BundleCaptioner,
    BundleClassifier,
    TorchCaptioner,
    TorchClassifier,
    answer_correct,
    caption_correct,
    evaluate_classifier,
)
from pocketvlm.export.loop import export_bundles
from pocketvlm.export.quant.config import QuantConfig
from tests import jvm_harness
from tests.app_checks import assert_app_block_matches_runtime


def test_labels_come_from_the_package_and_agree_with_every_question():
    train, test = load_split("train"), load_split("test")  # raises if pixels and any QA pair disagree
    assert (len(train), len(test)) == (4000, 1000)
    assert {s.label for s in test} == set(LABELS) and len(LABELS) == 24
    assert sum(len(s.questions) for s in test) == 9673
    first = test[0]
    assert first.caption == f"a {first.colour} {first.shape}"


def test_caption_and_answer_scoring():
    sample = load_split("test")[0]
    assert caption_correct(f"A {sample.colour} {sample.shape}.", sample)
    other = next(c for c in ("red", "blue") if c != sample.colour)
    assert not caption_correct(f"a {other} {sample.shape}", sample)
    assert not caption_correct(f"a {sample.colour} {sample.shape} and a {other} one", sample)
    assert not caption_correct(f"a {sample.colour} shape", sample)
    assert answer_correct("Yes.", "yes") and not answer_correct("yes, red", "yes")


@pytest.fixture(scope="module")
def clip_demo(tmp_path_factory):
    """The demo's own first run for shapes-clip (checkpoint, then fp32 / int8 / int4 in one export) into a fresh
    cache: the CLIP test checks those bundles, the demo test that later runs reuse them."""
    cache = tmp_path_factory.mktemp("shapes-clip-demo")
    messages: list[str] = []
    checkpoint = demo.model_checkpoint(cache, "shapes-clip", messages.append)
    bundles, export_s = demo.model_bundles(checkpoint, cache, "shapes-clip", messages.append)
    return cache, checkpoint, bundles, messages, export_s


def test_shapes_clip_is_trained_and_its_bundle_agrees_with_pytorch(clip_demo):
    _, checkpoint, bundles, _, _ = clip_demo
    samples = load_split("test")[:120]
    model, tokenizer = shapes_clip.build_clip()
    reference = TorchClassifier(model, tokenizer, shapes_clip.image_processor())
    images = [s.image() for s in samples]
    torch_top1 = reference.top1(images, shapes_clip.ZERO_SHOT_LABELS)
    onnx_top1 = BundleClassifier(bundles["fp32"]).top1(images, shapes_clip.ZERO_SHOT_LABELS)
    assert onnx_top1 == torch_top1
    scores = evaluate_classifier(BundleClassifier(bundles["int8"]), samples)
    assert scores["zero_shot_accuracy"] >= 0.9, scores
    # the real 49,408-token CLIP vocabulary, untrained rows rebuilt as zeros
    table = model.text_model.embeddings.token_embedding.weight
    assert table.shape[0] == 49408 and 0 < int((table.abs().sum(1) > 0).sum()) < 100
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "clip"


@pytest.fixture(scope="module")
def captioner_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes-captioner")
    checkpoint = captioner.write_checkpoint(root / "ckpt")
    return checkpoint, export_bundles(checkpoint, [(root / "fp32", QuantConfig.parse("fp32"))])[0]


def test_captioner_uses_the_real_smollm2_and_captions_like_pytorch(captioner_bundle, photos):
    checkpoint, bundle = captioner_bundle
    model, tokenizer = captioner.build_captioner()
    lm, _ = captioner.load_smollm2()
    assert torch.equal(model.model.text_model.layers[7].mlp.down_proj.weight, lm.model.layers[7].mlp.down_proj.weight)
    assert model.config.text_config.num_hidden_layers == 30 and model.config.text_config.hidden_size == 576
    samples = load_split("test")[:6]
    onnx_side, torch_side = BundleCaptioner(bundle), TorchCaptioner(model, tokenizer)
    said = [onnx_side.answer(s, "Describe this image.") for s in samples]
    assert said == [torch_side.answer(s, "Describe this image.") for s in samples]
    assert sum(caption_correct(text, s) for text, s in zip(said, samples, strict=True)) >= 5, said
    question = samples[0].questions[0]
    assert onnx_side.answer(samples[0], question.text) == torch_side.answer(samples[0], question.text)
    # the Android app's prompt: without image splitting the layout is fixed, so the exporter resolves it
    assert_app_block_matches_runtime(bundle, photos)


def test_the_demo_bundles_replay_through_the_android_engine(clip_demo, captioner_bundle):
    """The golden record of every demo bundle replays through the Android app's Kotlin engine core on this JVM to
    the Python runtime's ids: preprocessing, the captioner's prompt from the app block and the Kotlin tokenizer, its
    generation loop over the recorded logits, CLIP's label ids (model stages need a phone: reported as not run)."""
    build = jvm_harness.engine_build()
    for bundle in [*clip_demo[2].values(), captioner_bundle[1]]:
        done = jvm_harness.run_main(build, "dev.pocketvlm.engine.cli.ReplayMainKt", str(bundle))
        assert done.returncode == 0, (bundle.name, done.stdout[-3000:], done.stderr[-2000:])
        stages = {stage["name"]: stage["status"] for stage in json.loads(done.stdout)["stages"]}
        ran = {"preprocess", "text"} if "image_encoder" in stages else {"preprocess", "prompt", "generation"}
        assert all(stages[name] == "passed" for name in ran), (bundle.name, stages)


def test_demo_exports_once_and_reuses_its_bundles(clip_demo, monkeypatch):
    tmp_path, _, _, exported, export_s = clip_demo  # the first run's export, into this cache
    assert any("building the shapes-clip checkpoint" in m for m in exported), exported
    assert any("exporting shapes-clip to fp32, int8, int4" in m for m in exported) and export_s > 0, exported
    monkeypatch.setattr(demo, "MODELS", {"shapes-clip": demo.MODELS["shapes-clip"]})
    monkeypatch.setattr(demo, "DEMO_IMAGES", 12)
    messages: list[str] = []
    first = demo.run_demo(tmp_path, messages.append)
    assert [r["quant"] for r in first["rows"]] == ["fp32", "int8", "int4"]
    assert all(r["accuracy"] >= 0.75 and r["bundle_mb"] > 0 for r in first["rows"]), first["rows"]
    assert not any("exporting" in m or "building" in m for m in messages), messages
    messages.clear()
    second = demo.run_demo(tmp_path, messages.append)
    assert not any("exporting" in m or "building" in m for m in messages), messages
    assert [r["accuracy"] for r in second["rows"]] == [r["accuracy"] for r in first["rows"]]
    report = (tmp_path / "demo_report.md").read_text()
    assert "| shapes-clip | int4 | zero-shot |" in report and "astronaut" in report
    assert set(json.loads((tmp_path / "demo_report.json").read_text())["photos"]) == {
        "shapes-clip fp32", "shapes-clip int8", "shapes-clip int4"}
    assert np.isfinite([r["latency_ms"] for r in second["rows"]]).all()


def test_demo_report_keeps_one_row_per_photo_whatever_the_models_say():
    """Generated text with line breaks, pipes or nothing at all stays inside its Markdown cell."""
    result = {"images": [], "rows": [], "photos": {"captioner fp32": {"rocket": "Ava\n Ava's | a girl", "cell": ""},
                                                   "captioner int4": {"rocket": "a red apple", "cell": "\n"}}}
    lines = demo.format_markdown(result).splitlines()
    rocket, cell = (next(line for line in lines if line.startswith(f"| {p} |")) for p in ("rocket", "cell"))
    assert rocket == "| rocket | Ava Ava's \\| a girl | a red apple |"
    assert cell == "| cell | (no text) | (no text) |"
