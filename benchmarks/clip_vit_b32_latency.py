"""CLIP ViT-B/32 image tower: pocketvlm's ONNX int8 bundle against PyTorch eager fp32, same run, inputs and threads.

Speed does not depend on weight values, so the real ViT-B/32 configuration (openai/clip-vit-base-patch32
config.json) with seeded random weights stands in for the checkpoint, which cannot be downloaded here.

    python benchmarks/clip_vit_b32_latency.py [--work /tmp/pocketvlm-clip-b32] [--runs 30] [--threads 2]

Writes ``benchmarks/results/clip_vit_b32_latency.json`` (machine, tools, threads, bundle manifest hash, figures).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

VIT_B32 = {
    "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12,
                    "vocab_size": 49408, "max_position_embeddings": 77},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                      "num_hidden_layers": 12, "image_size": 224, "patch_size": 32},
    "projection_dim": 512,
}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build(out: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from pocketvlm.export.synthetic import clip_bpe_tokenizer

    tokenizer = clip_bpe_tokenizer()
    config = CLIPConfig(text_config={**VIT_B32["text_config"], "eos_token_id": tokenizer.eos_token_id,
                                     "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id},
                        vision_config=VIT_B32["vision_config"], projection_dim=VIT_B32["projection_dim"])
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(str(out))
    return out


def median_ms(fn: Callable[[], Any], runs: int, warmup: int) -> dict[str, Any]:
    from pocketvlm.runtime.bench import summarize, timed

    return summarize(timed(fn, runs, warmup))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/pocketvlm-clip-b32"))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "clip_vit_b32_latency.json")
    args = parser.parse_args()
    import torch
    from transformers import CLIPModel

    from pocketvlm.export.bundle_writer import tool_versions
    from pocketvlm.export.loop import export_bundles
    from pocketvlm.export.quant.config import QuantConfig
    from pocketvlm.export.verify.photos import load_photos
    from pocketvlm.runtime.bench import machine
    from pocketvlm.runtime.dual_encoder import DualEncoder

    torch.set_num_threads(args.threads)
    checkpoint = args.work / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        say("building the random-weight ViT-B/32 checkpoint")
        build(checkpoint)
    bundles = {q: args.work / f"bundle-{q}" for q in ("fp32", "int8")}
    started = time.perf_counter()
    export_bundles(checkpoint, [(path, QuantConfig.parse(q)) for q, path in bundles.items()], progress=say)
    export_s = time.perf_counter() - started
    image = load_photos(("astronaut",))["astronaut"]
    model = CLIPModel.from_pretrained(str(checkpoint)).eval()
    rows = {}
    for quant, path in bundles.items():
        runner = DualEncoder.load(path, threads=args.threads)
        pixels = runner.pixel_values([image])
        rows[f"onnx-{quant}"] = median_ms(lambda r=runner, p=pixels: r.sessions["image_encoder"].run(
            {"pixel_values": p}), args.runs, args.warmup)
        rows[f"onnx-{quant}"]["manifest_sha256"] = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
        rows[f"onnx-{quant}"]["bundle_bytes"] = runner.bundle.total_bytes
        say(f"onnx {quant}: {rows[f'onnx-{quant}']['median_ms']:.1f} ms")
    tensor = torch.from_numpy(pixels)
    with torch.inference_mode():
        rows["pytorch-eager-fp32"] = median_ms(lambda: model.get_image_features(pixel_values=tensor), args.runs,
                                               args.warmup)
    say(f"pytorch eager fp32: {rows['pytorch-eager-fp32']['median_ms']:.1f} ms")
    result = {"kind": "clip_image_tower_latency", "model": "CLIP ViT-B/32 (real config, random weights)",
              "machine": machine(), "tools": tool_versions(), "threads": args.threads,
              "input": "astronaut photo, 1x3x224x224", "export_s_fp32_and_int8": export_s, "rows": rows,
              "int8_over_pytorch": rows["onnx-int8"]["median_ms"] / rows["pytorch-eager-fp32"]["median_ms"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"int8 / PyTorch eager = {result['int8_over_pytorch']:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
