"""Delegate coverage of a LiteRT bundle: per component and signature, the share of nodes the GPU and NNAPI delegates
accept (their own static checks replayed on the flatbuffer, ``pocketvlm.export.targets.tflite.delegates``) and
what falls back.

    python benchmarks/delegate_coverage.py --bundle /tmp/pocketvlm-full/qwen2_vl_2b-tflite-int4-b128 \
        --out benchmarks/results/delegates_qwen2_vl_2b_tflite_int4_b128.json

Writes a machine-made JSON file with the machine, the tool versions and the bundle's manifest hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
from pathlib import Path

from pocketvlm.export.bundle_writer import tool_versions
from pocketvlm.export.targets.tflite.delegates import delegate_section, format_coverage
from pocketvlm.runtime.manifest import load_bundle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    coverage = delegate_section(bundle).get("delegates")
    if not coverage:
        raise SystemExit(f"{args.bundle} has no .tflite components")
    result = {"bundle": args.bundle.name, "family": bundle.family,
              "manifest_sha256": hashlib.sha256((args.bundle / "manifest.json").read_bytes()).hexdigest(),
              "quantization": {name: spec.quantization["method"] for name, spec in bundle.components.items()},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "tools": tool_versions(),
              "delegates": coverage}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_coverage(coverage))


if __name__ == "__main__":
    main()
