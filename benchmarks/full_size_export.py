"""Export a full-size random-weight model of a real architecture and record wall time and peak RSS.

Speed and memory do not depend on weight values, so the real config with seeded random weights stands in for the
real checkpoint (which cannot be downloaded here). The checkpoint is built in one child process and exported in
another (`pocketvlm export`), which reports its own peak RSS (getrusage of itself, so the build does not count).

    python benchmarks/full_size_export.py --model qwen2_vl_2b --quant int4 --block-size 128 --work /tmp/pocketvlm-full
    python benchmarks/full_size_export.py --model qwen2_vl_2b --quant int4 --target tflite   # LiteRT bundle
    python benchmarks/full_size_export.py --model qwen2_vl_2b --quant int4 --target coreml   # Core ML bundle

Core ML converts each component in a child process of the export: the peak RSS recorded is then the larger of the
export process's own and its largest child's (both are in the result file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# Real configurations (from the published config.json files), with the special-token ids of the synthetic tokenizer.
REAL_CONFIGS = {
    "qwen2_vl_2b": {
        "family": "qwen2_vl",
        "text_config": {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                        "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                        "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                        "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24],
                                            "rope_theta": 1000000.0}},
        "vision_config": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4, "num_heads": 16,
                          "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        "tie_word_embeddings": True,
    },
}

BUILD = """
import json, sys, torch
from pathlib import Path
from transformers import Qwen2VLConfig
from pocketvlm.export.registry import get_family
from pocketvlm.export.synthetic import train_tokenizer
spec = json.loads(sys.argv[1]); out = Path(sys.argv[2])
tok = train_tokenizer("qwen2_vl")
ids = {k: tok.convert_tokens_to_ids(t) for k, t in (("image_token_id", "<|image_pad|>"), ("video_token_id",
       "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
spec["text_config"].update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
family = get_family(spec.pop("family"))
config = Qwen2VLConfig(**spec, **ids, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
torch.manual_seed(0)
model = family.from_config(config)
print("parameters", sum(p.numel() for p in model.parameters()), flush=True)
model.save_pretrained(out)
tok.save_pretrained(out)
family.default_processor(config).save_pretrained(out)
"""


EXPORT = """
import resource, sys
from pocketvlm.cli.main import main
code = main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
print("PEAK_CHILD_RSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
sys.exit(code)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(REAL_CONFIGS), default="qwen2_vl_2b")
    parser.add_argument("--quant", default="int4")
    parser.add_argument("--block-size", type=int, default=None,
                        help="MatMulNBits block size (default: the quantizer's, 32); 128 is the usual GPTQ/AWQ group")
    parser.add_argument("--target", choices=("onnx", "tflite", "coreml"), default="onnx")
    parser.add_argument("--shapes", type=Path, default=None,
                        help="tflite, coreml: static shapes JSON (see export --shapes)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pocketvlm-full"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    target = "" if args.target == "onnx" else f"-{args.target}"
    checkpoint, bundle = args.work / f"{args.model}-ckpt", args.work / f"{args.model}{target}-{args.quant}"
    args.work.mkdir(parents=True, exist_ok=True)
    spec = dict(REAL_CONFIGS[args.model])
    if not (checkpoint / "config.json").is_file():
        print(f"building {args.model} (random weights) in {checkpoint}", flush=True)
        subprocess.run([sys.executable, "-c", BUILD, json.dumps(spec), str(checkpoint)], check=True)
    weight_bytes = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))
    quant = args.quant
    if args.block_size:
        quant_file = args.work / f"quant-{args.quant}-b{args.block_size}.json"
        quant_file.write_text(json.dumps({"default": {"method": args.quant, "block_size": args.block_size}}))
        quant, bundle = str(quant_file), bundle.with_name(f"{bundle.name}-b{args.block_size}")
    print(f"exporting to {bundle} ({quant})", flush=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", EXPORT, "export", "--model", str(checkpoint), "--out", str(bundle),
                           "--quant", quant, "--progress", "--target", args.target,
                           *(["--shapes", str(args.shapes)] if args.shapes else [])],
                          check=True, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    print(done.stdout, end="")
    own_kb = int(done.stdout.split("PEAK_RSS_KB")[-1].split()[0])
    child_kb = int(done.stdout.split("PEAK_CHILD_RSS_KB")[-1].split()[0])
    peak_kb = max(own_kb, child_kb)
    manifest = json.loads((bundle / "manifest.json").read_text())
    bundle_bytes = sum(f["bytes"] for f in manifest["files"])
    parameters = weight_bytes // 4  # the checkpoint is float32
    result = {
        "model": args.model, "target": args.target, "quant": args.quant, "block_size": args.block_size or 32,
        "parameters": parameters, "fp32_parameter_bytes": weight_bytes,
        "export_wall_s": round(wall, 1), "export_peak_rss_bytes": peak_kb * 1024,
        "export_process_peak_rss_bytes": own_kb * 1024, "largest_child_peak_rss_bytes": child_kb * 1024,
        "peak_rss_vs_fp32_bytes": round(peak_kb * 1024 / weight_bytes, 3),
        "load_1min_at_end": os.getloadavg()[0],
        "bundle_bytes": bundle_bytes, "bundle_bytes_per_parameter": round(bundle_bytes / parameters, 4),
        "components": {name: {"bytes": c["bytes"], "quantization": c["quantization"],
                              **({"static": c["static"]} if "static" in c else {})}
                       for name, c in manifest["components"].items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "tools": manifest["source"]["tools"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"_b{args.block_size}" if args.block_size else ""
    path = args.out / f"full_size_export_{args.model}{target.replace('-', '_')}_{args.quant}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
