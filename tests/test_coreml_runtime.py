"""Core ML bundles through the runtime's own entry points: the same ``VisionLanguageModel`` / ``DualEncoder`` code
as ONNX, with the predictor the runtime picks (Core ML itself on macOS) or one injected (the reference evaluator).

export (fp16 Core ML, and fp32 ONNX of the same checkpoint) -> load with the evaluator injected -> caption / embed
-> compare with the ONNX bundle; then the predictor choice with ``platform.system()`` stubbed.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np
import pytest

from pocketvlm.runtime import errors
from pocketvlm.runtime.backends import open_session
from pocketvlm.runtime.dual_encoder import DualEncoder
from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.manifest import load_bundle
from pocketvlm.runtime.vlm import DEFAULT_CAPTION_PROMPT, VisionLanguageModel
from tests.test_coreml import coreml_bundles, coreml_vlm

pytest.importorskip("coremltools")
from pocketvlm.export.targets.coreml.check import EvaluatorPredictor, load_runner  # noqa: E402


def coreml_clip(workspace) -> Path:
    """The fp16 Core ML bundle of the tiny CLIP checkpoint (shared with tests/test_coreml.py's exports)."""
    return coreml_bundles(workspace, "clip")["fp16"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_coreml_vlm_captions_through_the_runtime_like_onnx(workspace, photos):
    """Caption (streamed) with the evaluator injected: ONNX's greedy tokens, a divergence allowed only on a near-tie
    (the ONNX top-2 margin within 2x the fp16 logit error there, as in test_coreml)."""
    coreml = VisionLanguageModel.load(coreml_vlm(workspace, "idefics3"), predictor=EvaluatorPredictor)
    onnx = VisionLanguageModel.load(workspace.bundle("idefics3", "fp32", "fp16"))
    decoder = coreml.sessions["text_decoder"]
    assert decoder.backend == EvaluatorPredictor.name and decoder.owns_kv_cache
    assert not onnx.sessions["text_decoder"].owns_kv_cache
    config = GenerationConfig(max_new_tokens=8)
    equal = 0
    for name in ("astronaut", "camera"):
        pieces: list[str] = []
        got = coreml.generate(photos[name], DEFAULT_CAPTION_PROMPT, config, on_text=pieces.append)
        assert "".join(pieces) == got.text
        ids, processed = coreml.prepare(photos[name], DEFAULT_CAPTION_PROMPT)
        ref = onnx.generate_ids(ids, processed, config)  # the same prompt ids and pixels through ONNX
        forced = GenerationConfig(max_new_tokens=len(ref.token_ids))
        ref_logits = np.stack(onnx.generate_ids(ids, processed, forced, forced=ref.token_ids).logits)
        got_logits = np.stack(coreml.generate_ids(ids, processed, forced, forced=ref.token_ids).logits)
        assert cosines(ref_logits, got_logits).min() >= 0.999
        step = next((i for i, (a, b) in enumerate(zip(got.token_ids, ref.token_ids)) if a != b), None)
        if step is None:
            assert got.token_ids == ref.token_ids
            equal += 1
            continue
        top2 = np.sort(ref_logits[step])[-2:]
        error = np.abs(ref_logits[step] - got_logits[step]).max()
        assert top2[1] - top2[0] <= 2 * error, (name, step, got.token_ids, ref.token_ids)
    assert equal >= 1


def test_coreml_dual_encoder_embeds_through_the_runtime_like_onnx(workspace, photos):
    from pocketvlm.runtime.bench import run_bench

    coreml = DualEncoder.load(coreml_clip(workspace), predictor=EvaluatorPredictor)
    onnx = DualEncoder.load(workspace.bundle("clip"))
    images = [photos[k] for k in ("astronaut", "coffee", "camera")]  # 3 images: the batch-1 loop
    texts = ["a photo of a cat", "a cup of coffee", "a man with a camera"]
    assert cosines(coreml.embed_image(images), onnx.embed_image(images)).min() >= 0.9999
    assert cosines(coreml.embed_text(texts), onnx.embed_text(texts)).min() >= 0.9999
    top = [[p.label for p in row] for row in coreml.classify(images, texts)]
    assert top == [[p.label for p in row] for row in onnx.classify(images, texts)]
    # bench records what ran: the sessions' own description
    result = run_bench(coreml.bundle.path, images[0], runs=1, warmup=0, bandwidth=False,
                       predictor=EvaluatorPredictor)
    assert result["engine"] == EvaluatorPredictor.name
    assert set(result["engines"]) == {"image_encoder", "text_encoder"}


def test_macos_runs_core_ml_itself(workspace, monkeypatch):
    """Only ``platform.system()`` stubbed: the CLI and ``load_runner`` inject coremltools' MLModel (which loads the
    package's spec on Linux too, without being able to predict); the runtime alone injects nothing."""
    from pocketvlm.cli.common import core_ml_predictor
    from pocketvlm.export.targets.coreml.predictor import MLModelPredictor

    clip = load_bundle(coreml_clip(workspace))
    vlm = load_bundle(coreml_vlm(workspace, "idefics3"))  # exported (golden record included) before the stub
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert core_ml_predictor() is MLModelPredictor
    session = open_session(clip, "image_encoder", predictor=core_ml_predictor())
    assert isinstance(session._predictor, MLModelPredictor)
    assert session.backend.startswith("coremltools ") and session.backend.endswith("MLModel (ALL)")
    runner = load_runner(clip.path)
    assert all(isinstance(s._predictor, MLModelPredictor) for s in runner.sessions.values())
    decoder = open_session(vlm, "text_decoder", predictor=MLModelPredictor)
    assert isinstance(decoder._predictor, MLModelPredictor) and decoder.owns_kv_cache
    with pytest.raises(errors.BundleError, match="through a predictor the caller passes"):
        open_session(clip, "image_encoder")  # the runtime imports no Core ML tooling of its own
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    assert core_ml_predictor() is None
    assert isinstance(load_runner(clip.path).sessions["image_encoder"]._predictor, EvaluatorPredictor)
    with pytest.raises(errors.BundleError, match="Core ML runs only on macOS"):
        open_session(clip, "image_encoder")


def test_macos_without_coremltools_names_the_install(workspace, monkeypatch):
    clip = load_bundle(coreml_clip(workspace))
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setitem(sys.modules, "coremltools", None)  # import coremltools -> ImportError
    from pocketvlm.cli.common import core_ml_predictor

    with pytest.raises(errors.BundleError, match="needs coremltools") as caught:
        open_session(clip, "image_encoder", predictor=core_ml_predictor())  # what the CLI does on a Mac
    assert caught.value.fix == "pip install coremltools"
