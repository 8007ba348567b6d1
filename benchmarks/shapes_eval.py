"""Issue 4's quality figures: the trained shapes models on the full easy-VQA test split (1,000 images), in PyTorch
fp32 and as fp32 / int8 / int4 ONNX bundles. Bundles come from (and are shared with) the ``pocketvlm demo`` cache.

    python benchmarks/shapes_eval.py [--limit N] [--cache DIR] [--rows pytorch,fp32,int8,int4] [--threads T]
                                     [--target onnx|tflite] [--out benchmarks/results/shapes_eval.json]

``--target tflite`` evaluates LiteRT bundles (fp32 / int8 / int4 with ai-edge-quantizer's recipes; the captioner's
int4 with its corrected GPTQ), exported next to the demo's ONNX bundles in the cache and run through the runtime's
LiteRT session.

``--target coreml`` evaluates Core ML bundles (fp16 / int8 / int4 / palette4) with pocketvlm's reference evaluator
of the packages (numpy; on macOS, Core ML itself).

``--rows`` and ``--threads`` let two processes split the work on a 2-core machine (e.g. PyTorch on one core, the
bundles on the other), each writing its own file.

Writes a machine-made JSON file with the machine, the tool versions and each bundle's manifest hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from pocketvlm.cli.demo_cmd import default_cache
from pocketvlm.demo.run import model_bundles, model_checkpoint
from pocketvlm.demo.shapes import captioner, shapes_clip
from pocketvlm.demo.shapes.data import load_split
from pocketvlm.demo.shapes.evaluate import (
    BundleCaptioner,
    BundleClassifier,
    TorchCaptioner,
    TorchClassifier,
    evaluate_captioner,
    evaluate_classifier,
)
from pocketvlm.export.bundle_writer import tool_versions
from pocketvlm.export.quant.calibration import SignatureFeedRecorder
from pocketvlm.export.static_shapes import StaticShapes


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def manifest_sha(bundle: Path) -> str:
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()


# the shapes prompts are under 128 tokens with the image: a 256-slot KV cache keeps GPTQ calibration feeds small
SHAPES = StaticShapes(prefill_length=128, kv_capacity=256)


def stale_bundles(plan: dict[str, Path], recipes: dict[str, Any], checkpoint: Path) -> list[str]:
    """The rows of ``plan`` whose bundle is missing, or was exported from other weights or with another recipe."""
    from pocketvlm.export.app_block import lacks_app_block
    from pocketvlm.export.checkpoint import read_checkpoint
    from pocketvlm.runtime.errors import BundleError
    from pocketvlm.runtime.manifest import load_bundle

    weights = read_checkpoint(checkpoint).weights_sha256()
    stale = []
    for quant, out in plan.items():
        try:
            manifest = load_bundle(out).manifest
            if (manifest["source"]["weights_sha256"] == weights and manifest["quantization"] == recipes[quant].to_json()
                    and not lacks_app_block(manifest)):
                continue
        except BundleError:
            pass
        stale.append(quant)
    return stale


def tflite_bundles(checkpoint: Path, cache: Path, name: str, wanted: set[str],
                   calibration_images: int = 32) -> dict[str, Path]:
    """LiteRT bundles of ``checkpoint`` (fp32 / int8 / int4), exported together when any is missing or stale."""
    from pocketvlm.export.loop import export_bundles
    from pocketvlm.export.quant.config import QuantConfig, QuantSpec

    plan = {q: cache / "bundles" / f"{name}-tflite-{q}" for q in ("fp32", "int8", "int4") if q in wanted | {"fp32"}}
    recipes = {q: QuantConfig.parse(q) for q in plan}
    if name == "shapes-captioner" and "int4" in recipes:  # round-to-nearest int4 breaks the real SmolLM2 decoder
        recipes["int4"] = QuantConfig(QuantSpec(method="int4", gptq=True))
    stale = stale_bundles(plan, recipes, checkpoint)
    plain = [q for q in stale if not recipes[q].uses_gptq]
    if plain:
        say(f"exporting {name} LiteRT bundles: {', '.join(plain)}")
        export_bundles(checkpoint, [(plan[q], recipes[q]) for q in plain], target="tflite", progress=say,
                       shapes=SHAPES)
    for quant in (q for q in stale if recipes[q].uses_gptq):
        say(f"recording GPTQ calibration feeds through {plan['fp32'].name}")
        feeds = captioner.calibration_feeds(plan["fp32"], images=calibration_images, recorder=SignatureFeedRecorder)
        export_bundles(checkpoint, [(plan[quant], recipes[quant])], target="tflite", progress=say, shapes=SHAPES,
                       calibration=feeds)
    return {q: out for q, out in plan.items() if q in wanted}


def coreml_bundles(checkpoint: Path, cache: Path, name: str, wanted: set[str]) -> dict[str, Path]:
    """Core ML bundles of ``checkpoint`` (fp16 / int8 / int4 / palette4, and ``int4-gptq``: int4 with pocketvlm's
    GPTQ on the text_decoder, calibrated on feeds recorded through the demo's fp32 ONNX bundle), exported when
    missing or stale;
    evaluated off macOS with pocketvlm's reference evaluator (graph and weights, not device numerics)."""
    from pocketvlm.export.loop import export_bundles
    from pocketvlm.export.quant.config import QuantConfig, QuantSpec

    names = ("fp16", "int8", "int4", "palette4", "int4-gptq")
    plan = {q: cache / "bundles" / f"{name}-coreml-{q}" for q in names if q in wanted}
    # GPTQ on the decoder (the real SmolLM2, which round-to-nearest int4 breaks); the vision side stays coremltools'
    # round-to-nearest int4
    gptq = QuantConfig(QuantSpec(method="int4"), {"text_decoder": QuantSpec(method="int4", gptq=True)})
    recipes = {q: gptq if q == "int4-gptq" else QuantConfig.parse(q) for q in plan}
    stale = stale_bundles(plan, recipes, checkpoint)
    plain = [q for q in stale if not recipes[q].uses_gptq]
    if plain:
        say(f"exporting {name} Core ML bundles: {', '.join(plain)}")
        export_bundles(checkpoint, [(plan[q], recipes[q]) for q in plain], target="coreml", progress=say,
                       shapes=SHAPES)
    if "int4-gptq" in stale:
        fp32 = model_bundles(checkpoint, cache, name, say)[0]["fp32"]
        say(f"recording GPTQ calibration feeds through {fp32.name}")
        feeds = captioner.calibration_feeds(fp32, images=16) if name == "shapes-captioner" else None
        if feeds is None:
            raise SystemExit("int4-gptq rows are for the captioner (CLIP's int4 keeps its accuracy without GPTQ)")
        export_bundles(checkpoint, [(plan["int4-gptq"], recipes["int4-gptq"])], target="coreml", progress=say,
                       shapes=SHAPES, calibration=feeds)
    return plan


def qnn_bundles(checkpoint: Path, cache: Path, name: str, wanted: set[str],
                calibration_images: int = 32) -> dict[str, Path]:
    """QNN (Qualcomm HTP, SM8650) bundles: CLIP fp16 / a16w8 / a8w8 (both towers); the captioner's vision encoder at
    a16w8 / a8w8 with the decoder fp16. Static activations are calibrated on train-split images (and, for CLIP's text
    tower, its zero-shot label prompts), exported when missing or stale; evaluated on the HTP emulator."""
    import tempfile

    from pocketvlm.demo.shapes.evaluate import ZERO_SHOT_LABELS
    from pocketvlm.export.loop import export_bundles
    from pocketvlm.export.quant.config import QuantConfig

    plan = {q: cache / "bundles" / f"{name}-qnn-{q}" for q in ("fp16", "a16w8", "a8w8") if q in wanted}
    decoder = "" if name == "shapes-clip" else ",text_decoder=fp16"
    recipes = {q: QuantConfig.parse(q + (decoder if q != "fp16" else "")) for q in plan}
    stale = stale_bundles(plan, recipes, checkpoint)
    if stale:
        with tempfile.TemporaryDirectory() as tmp:
            images = []
            for i, sample in enumerate(load_split("train")[:calibration_images]):
                images.append(Path(tmp) / f"train_{i:03d}.png")
                sample.image().save(images[-1])
            say(f"exporting {name} QNN bundles: {', '.join(stale)} (calibrated on {len(images)} train images)")
            export_bundles(checkpoint, [(plan[q], recipes[q]) for q in stale], target="qnn", progress=say,
                           shapes=SHAPES, calibration_images=tuple(images),
                           calibration_texts=tuple(f"a photo of {label}." for label in ZERO_SHOT_LABELS))
    return plan


def hybrid_captioner(qnn_bundle: Path, onnx_bundle: Path, threads: int) -> Any:
    """The captioner with its vision encoder from ``qnn_bundle`` (on the HTP) and its decoder from the ONNX fp32
    bundle (CPU): the vision side's accuracy on its own, at CPU decode speed."""
    from pocketvlm.runtime.backends import open_session
    from pocketvlm.runtime.manifest import load_bundle

    runner = BundleCaptioner(onnx_bundle, threads)
    runner.model.sessions["vision_encoder"] = open_session(load_bundle(qnn_bundle), "vision_encoder")
    return runner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all 1,000)")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--models", default="shapes-clip,shapes-captioner")
    parser.add_argument("--rows", default="pytorch,fp32,int8,int4", help="which rows to evaluate")
    parser.add_argument("--target", choices=("onnx", "tflite", "coreml", "qnn"), default="onnx",
                        help="coreml rows: fp16,int8,int4,palette4,int4-gptq; qnn rows: fp16,a16w8,a8w8 (the "
                        "captioner's a16w8/a8w8 rows also as vision-only rows, the decoder on CPU: --hybrid)")
    parser.add_argument("--hybrid", action="store_true",
                        help="qnn captioner: vision encoder from the QNN bundle, decoder from the ONNX fp32 bundle")
    parser.add_argument("--calibration-images", type=int, default=32,
                        help="tflite: train-split images whose feeds calibrate int4 GPTQ (applies when the int4 bundle "
                        "is made: move an existing one away first)")
    parser.add_argument("--no-vqa", action="store_true", help="captions only (the VQA pass doubles the time)")
    parser.add_argument("--threads", type=int, default=0, help="threads for torch and ONNX Runtime (0: all cores)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "shapes_eval.json")
    args = parser.parse_args()
    wanted = set(args.rows.split(","))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cache = args.cache or default_cache()
    samples = load_split("test")[:args.limit]
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": os.cpu_count()},
               "tools": tool_versions(), "threads": args.threads or os.cpu_count(), "test_images": len(samples),
               "models": {}}
    for name in args.models.split(","):
        checkpoint = model_checkpoint(cache, name, say)
        if args.target == "onnx":
            bundles = model_bundles(checkpoint, cache, name, say)[0]
        elif args.target == "tflite":
            bundles = tflite_bundles(checkpoint, cache, name, wanted, args.calibration_images)
        elif args.target == "qnn":
            bundles = qnn_bundles(checkpoint, cache, name, wanted, args.calibration_images)
        else:
            bundles = coreml_bundles(checkpoint, cache, name, wanted)
        rows = {}
        started = time.perf_counter()
        bundles = {quant: bundle for quant, bundle in bundles.items() if quant in wanted}
        if name == "shapes-clip":
            if "pytorch" in wanted:
                model, tokenizer = shapes_clip.build_clip()
                rows["pytorch-fp32"] = evaluate_classifier(
                    TorchClassifier(model, tokenizer, shapes_clip.image_processor()), samples)
            for quant, bundle in bundles.items():
                rows[f"{args.target}-{quant}"] = {**evaluate_classifier(BundleClassifier(bundle, args.threads),
                                                                        samples),
                                         "manifest_sha256": manifest_sha(bundle)}
        else:
            if "pytorch" in wanted:
                model, tokenizer = captioner.build_captioner()
                rows["pytorch-fp32"] = evaluate_captioner(TorchCaptioner(model, tokenizer), samples, say, examples=10)
                del model
            for quant, bundle in bundles.items():
                say(f"{name} {quant}")
                runner = BundleCaptioner(bundle, args.threads)
                if args.hybrid:
                    runner = hybrid_captioner(bundle, model_bundles(checkpoint, cache, name, say)[0]["fp32"],
                                              args.threads)
                    quant = f"{quant}-vision-only"
                rows[f"{args.target}-{quant}"] = {**evaluate_captioner(runner,
                                                                       samples, say, examples=10,
                                                                       vqa=not args.no_vqa),
                                         "manifest_sha256": manifest_sha(bundle),
                                         "quantization": json.loads((bundle / "manifest.json").read_text())[
                                             "quantization"]}
        for key, row in rows.items():
            say(f"{name} {key}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))
        results["models"][name] = {"rows": rows, "eval_s": time.perf_counter() - started}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
