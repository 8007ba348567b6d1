"""The MediaPipe variant (``pocketvlm export --target tflite --mediapipe``) of the shapes CLIP, run by MediaPipe
Tasks' own ImageEmbedder (PyPI mediapipe), against the bundle's LiteRT path with pocketvlm's preprocessing.

Per input scale (1: MediaPipe's bilinear stretch does the whole resize; above: the graph's antialiased resize from
MediaPipe's sample grid): the cosine of the two embeddings on each of the 16 test photos (MediaPipe given the
manifest's region of interest), zero-shot accuracy on the shapes test split with each embedding against the bundle's
text tower, and the median time per embedded photo on each path.

    python benchmarks/mediapipe_embedder.py [--scales 1,2,4,8] [--images 200] [--cache DIR] [--out FILE]

Bundles are exported into the ``pocketvlm demo`` cache (one fp32 LiteRT bundle per scale) when missing or stale.
Writes a machine-made JSON file with the machine, the tool versions and each bundle's manifest hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.cli.demo_cmd import default_cache
from pocketvlm.demo.run import model_checkpoint
from pocketvlm.demo.shapes.data import load_split
from pocketvlm.demo.shapes.shapes_clip import ZERO_SHOT_LABELS
from pocketvlm.export.bundle_writer import tool_versions
from pocketvlm.export.checkpoint import read_checkpoint
from pocketvlm.export.loop import export_bundles
from pocketvlm.export.quant.config import QuantConfig
from pocketvlm.export.targets.tflite.mediapipe import default_scale
from pocketvlm.export.verify.mediapipe_check import MediaPipeEmbedder, photo_cosines, zero_shot
from pocketvlm.export.verify.photos import load_photos
from pocketvlm.runtime.dual_encoder import DualEncoder
from pocketvlm.runtime.errors import BundleError
from pocketvlm.runtime.manifest import load_bundle


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def scale_bundle(checkpoint: Path, cache: Path, scale: int) -> Path:
    """The fp32 LiteRT bundle of the shapes CLIP with a MediaPipe variant at ``scale``, exported if missing or
    stale."""
    out = cache / "bundles" / f"shapes-clip-tflite-mediapipe-x{scale}"
    try:
        manifest = load_bundle(out).manifest
        record = manifest["components"]["image_encoder"].get("mediapipe") or {}
        if (record.get("in_graph", {}).get("scale") == scale
                and manifest["source"]["weights_sha256"] == read_checkpoint(checkpoint).weights_sha256()):
            return out
    except BundleError:
        pass
    say(f"exporting the shapes CLIP to LiteRT with a MediaPipe variant at {scale}x")
    return export_bundles(checkpoint, [(out, QuantConfig.parse("fp32"))], target="tflite", progress=say,
                          mediapipe=("image_encoder",), mediapipe_scale=scale)[0]


def median_ms(run: Any, images: list[Any]) -> float:
    times = []
    for image in images:
        started = time.perf_counter()
        run(image)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def evaluate(bundle: Path, photos: dict[str, Any], samples: list[Any]) -> dict[str, Any]:
    cosines = photo_cosines(bundle, photos)
    values = list(cosines.values())
    scores = zero_shot(bundle, [s.image() for s in samples], [f"a {s.label}" for s in samples], ZERO_SHOT_LABELS)
    runtime = DualEncoder.load(bundle)
    with MediaPipeEmbedder(bundle) as embedder:
        images = list(photos.values())
        timing = {"mediapipe_ms_per_photo": median_ms(embedder.features, images),
                  "pocketvlm_litert_ms_per_photo": median_ms(lambda image: runtime.embed_image([image]), images)}
        record = embedder.record
    return {"manifest_sha256": hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest(),
            "input_shape": record["input"]["shape"], "variant_bytes": record["bytes"],
            "photo_cosine": {"min": min(values), "mean": float(np.mean(values)),
                             "below_0.999": sorted(name for name, c in cosines.items() if c < 0.999),
                             "per_photo": cosines},
            "zero_shot": scores, "timing": timing}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1,2,4,8", help="input scales of the MediaPipe variant")
    parser.add_argument("--images", type=int, default=200, help="shapes test-split images for zero-shot")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mediapipe_embedder.json")
    args = parser.parse_args()
    cache = args.cache or default_cache()
    checkpoint = model_checkpoint(cache, "shapes-clip", say)
    photos, samples = load_photos(), list(load_split("test")[:args.images])
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "tools": {**tool_versions(), "mediapipe": metadata.version("mediapipe")},
        "model": "shapes-clip (64 px tower)", "default_scale": default_scale(64), "photos": len(photos),
        "zero_shot_images": len(samples), "labels": len(ZERO_SHOT_LABELS), "scales": {}}
    for scale in (int(s) for s in args.scales.split(",")):
        bundle = scale_bundle(checkpoint, cache, scale)
        say(f"evaluating {scale}x")
        row = results["scales"][str(scale)] = evaluate(bundle, photos, samples)
        say(f"{scale}x: photo cosine min {row['photo_cosine']['min']:.5f} mean {row['photo_cosine']['mean']:.5f}; "
            f"zero-shot pocketvlm {row['zero_shot']['pocketvlm_accuracy']:.3f} mediapipe "
            f"{row['zero_shot']['mediapipe_accuracy']:.3f} (top-1 agreement {row['zero_shot']['top1_agreement']:.3f})")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
