"""``pocketvlm demo``: the main job, offline, on the embedded default model.

Until the trained shapes models land (issue 4), the embedded default is a CLIP of ViT-B/32 layout at reduced width
(hidden 256, 4 layers, 224 px, patch 32) with the real CLIP BPE tokenizer and seeded random weights. The demo builds
that checkpoint, exports it to fp32 / int8 / int4 ONNX bundles in a cache (reused on the next run), checks each
bundle against PyTorch on the scikit-image photos, times the image encoder, and classifies the photos. With random
weights the labels it picks carry no meaning; agreement with PyTorch does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.parity import dual_encoder_parity
from pocketvlm.export.photos import PHOTO_LABELS, load_photos
from pocketvlm.export.pipeline import export_bundle, tool_versions
from pocketvlm.export.quantize import QuantConfig
from pocketvlm.export.synthetic import build_checkpoint, clip_bpe_tokenizer
from pocketvlm.runtime.dual_encoder import DualEncoder
from pocketvlm.runtime.errors import BundleError
from pocketvlm.runtime.manifest import load_bundle

RECIPE = {"family": "clip", "seed": 0, "hidden": 256, "layers": 4, "heads": 4, "image_size": 224, "patch_size": 32,
          "projection_dim": 256, "max_positions": 77}
QUANTS = ("fp32", "int8", "int4")


def _checkpoint(cache: Path, say: Callable[[str], None]) -> Path:
    path = cache / "checkpoints" / "clip-demo"
    stamp = path / "pocketvlm_recipe.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == RECIPE:
        return path
    say("building the demo checkpoint (seeded CLIP, real CLIP BPE tokenizer)")
    sizes = {k: v for k, v in RECIPE.items() if k not in ("family", "seed")}
    build_checkpoint("clip", path, seed=RECIPE["seed"], tokenizer=clip_bpe_tokenizer(), **sizes)
    stamp.write_text(json.dumps(RECIPE))
    return path


def _bundle(checkpoint: Path, cache: Path, quant: str, say: Callable[[str], None]) -> tuple[Path, float | None]:
    out = cache / "bundles" / f"clip-demo-{quant}"
    try:
        bundle = load_bundle(out)
        if bundle.manifest["source"]["config_sha256"] == _config_sha(checkpoint):
            return out, None
    except BundleError:
        pass
    started = time.perf_counter()
    say(f"exporting {quant} bundle")
    export_bundle(checkpoint, out, quant=QuantConfig.parse(quant), progress=say)
    return out, time.perf_counter() - started


def _config_sha(checkpoint: Path) -> str:
    from pocketvlm.export.checkpoint import read_checkpoint

    return read_checkpoint(checkpoint).config_sha256


def _latency_ms(runner: DualEncoder, images: list[Any], repeats: int = 10) -> float:
    pixels = runner.pixel_values(images[:1])
    session = runner.sessions["image_encoder"]
    session.run({"pixel_values": pixels})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run({"pixel_values": pixels})
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def run_demo(cache: Path, say: Callable[[str], None]) -> dict[str, Any]:
    cache.mkdir(parents=True, exist_ok=True)
    checkpoint = _checkpoint(cache, say)
    photos = load_photos()
    labels = list(dict.fromkeys(PHOTO_LABELS.values()))
    rows, predictions = [], {}
    for quant in QUANTS:
        bundle_dir, export_s = _bundle(checkpoint, cache, quant, say)
        say(f"checking {quant} bundle against PyTorch")
        report = dual_encoder_parity(bundle_dir, checkpoint, labels=labels, photos=photos)
        runner = DualEncoder.load(bundle_dir)
        top = runner.classify(list(photos.values()), labels)
        predictions[quant] = {name: preds[0].label for name, preds in zip(photos, top)}
        rows.append({
            "quant": quant,
            "bundle_mb": report["bundle_bytes"] / 1e6,
            "image_cosine_min": report["components"]["image_encoder"]["cosine_min"],
            "text_cosine_min": report["components"]["text_encoder"]["cosine_min"],
            "zero_shot_top1_agreement": report["zero_shot"]["top1_agreement"],
            "image_encode_ms": _latency_ms(runner, list(photos.values())),
            "export_s": export_s,
            "parity_pass": report["pass"],
        })
    result = {"model": "clip-demo (seeded random weights, real CLIP tokenizer)", "recipe": RECIPE, "rows": rows,
              "predictions": predictions, "photos": list(photos), "tools": tool_versions()}
    (cache / "demo_report.json").write_text(json.dumps(result, indent=2) + "\n")
    (cache / "demo_report.md").write_text(format_markdown(result) + "\n")
    return result


def format_markdown(result: dict[str, Any]) -> str:
    lines = [f"# pocketvlm demo: {result['model']}", "",
             "| quant | bundle MB | image cos min | text cos min | zero-shot top-1 agreement | image encode ms "
             "| parity |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['quant']} | {r['bundle_mb']:.2f} | {r['image_cosine_min']:.5f} | "
                     f"{r['text_cosine_min']:.5f} | {r['zero_shot_top1_agreement'] * 100:.1f}% | "
                     f"{r['image_encode_ms']:.2f} | {'pass' if r['parity_pass'] else 'FAIL'} |")
    lines += ["", "Top-1 label per photo (random weights: the labels carry no meaning; agreement with PyTorch does):",
              "", "| photo | " + " | ".join(result["predictions"]) + " |",
              "|---|" + "---|" * len(result["predictions"])]
    for name in result["photos"]:
        lines.append(f"| {name} | " + " | ".join(p[name] for p in result["predictions"].values()) + " |")
    return "\n".join(lines)
