"""Issue 16's coverage figures: full-size vision towers of real architectures (random weights; placement, compile and
context size do not depend on weight values) exported as today's dynamic-shape ONNX bundles, then put through
Qualcomm's HTP compiler with ``pocketvlm npu-check``: the share of nodes on the HTP as exported and with the dims
pinned, every CPU op with the EP's reason, compile time and context-binary size, per SoC.

    python benchmarks/npu_coverage.py --model clip_vit_b32 --work /tmp/pocketvlm-npu
    python benchmarks/npu_coverage.py --model qwen2_vl_2b --image-size 448 --work /tmp/pocketvlm-npu

Qwen2-VL-2B's decoder is cut to one layer in the checkpoint (only the vision encoder is measured; its output width
is the decoder's hidden size, kept). Writes ``benchmarks/results/npu_coverage_<model>.json``: the npu-check report
with the machine, the tool versions and the manifest hash.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
COMPONENT = {"clip_vit_b32": "image_encoder", "qwen2_vl_2b": "vision_encoder"}


def load(name: str):  # the sibling benchmark scripts hold the real configs and their builders
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(model: str, checkpoint: Path) -> None:
    if model == "clip_vit_b32":
        load("clip_vit_b32_latency").build(checkpoint)
        return
    full = load("full_size_export")
    spec = copy.deepcopy(full.REAL_CONFIGS["qwen2_vl_2b"])
    spec["text_config"]["num_hidden_layers"] = 1
    subprocess.run([sys.executable, "-c", full.BUILD, json.dumps(spec), str(checkpoint)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(COMPONENT), required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pocketvlm-npu"))
    parser.add_argument("--soc", default="SM8650,SM8750")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from pocketvlm.cli.main import main as cli
    from pocketvlm.export.bundle_writer import tool_versions

    checkpoint, bundle = args.work / f"{args.model}-ckpt", args.work / f"{args.model}-onnx-fp32"
    if not (checkpoint / "config.json").exists():
        print(f"building {args.model} (random weights) in {checkpoint}", flush=True)
        build(args.model, checkpoint)
    if not (bundle / "manifest.json").exists():
        print(f"exporting {bundle} (ONNX fp32, dynamic shapes)", flush=True)
        if cli(["export", "--model", str(checkpoint), "--out", str(bundle), "--progress"]) != 0:
            raise SystemExit("export failed")
    out = args.out or HERE / "results" / f"npu_coverage_{args.model}.json"
    raw = args.work / f"{args.model}-npu-check.json"
    started = time.perf_counter()
    argv = ["npu-check", "--bundle", str(bundle), "--soc", args.soc, "--component", COMPONENT[args.model],
            "--json", str(raw), "--progress"]
    if args.image_size:
        argv += ["--image-size", str(args.image_size)]
    if cli(argv) != 0:
        raise SystemExit("npu-check failed")
    report = json.loads(raw.read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    result = {"model": args.model, "weights": "random (seeded); placement and compile do not depend on values",
              "parameters_component_bytes": manifest["components"][COMPONENT[args.model]]["bytes"],
              "manifest_sha256": hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest(),
              "image_size": args.image_size, "wall_seconds": round(time.perf_counter() - started, 1),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "tools": tool_versions(),
              "npu_check": report}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
