"""Figures for the spine acceptance: medium random-weight CLIP and SigLIP (hidden 256, 4 layers), exported to
fp32 / int8 / int4 ONNX and compared with PyTorch on the scikit-image photos. Writes a machine-made JSON file.

    python benchmarks/spine_parity.py [--out benchmarks/results/spine_parity.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from pocketvlm.export.bundle_writer import tool_versions
from pocketvlm.export.loop import export_bundle
from pocketvlm.export.quant.config import QuantConfig
from pocketvlm.export.synthetic import build_checkpoint
from pocketvlm.export.verify.parity import dual_encoder_parity
from pocketvlm.export.verify.photos import load_photos

MEDIUM = {"hidden": 256, "layers": 4, "heads": 4, "image_size": 64, "patch_size": 16}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "spine_parity.json")
    args = parser.parse_args()
    photos = load_photos()
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "python": platform.python_version()},
               "tools": tool_versions(), "config": MEDIUM, "photos": list(photos), "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("clip", "siglip"):
            checkpoint = build_checkpoint(family, Path(tmp) / f"{family}-ckpt", seed=0, **MEDIUM)
            rows = {}
            for quant in ("fp32", "fp16", "int8", "int4"):
                started = time.perf_counter()
                bundle = export_bundle(checkpoint, Path(tmp) / f"{family}-{quant}", quant=QuantConfig.parse(quant))
                export_s = time.perf_counter() - started
                report = dual_encoder_parity(bundle, checkpoint, photos=photos)
                rows[quant] = {"export_s": round(export_s, 2), "bundle_bytes": report["bundle_bytes"],
                               "components": report["components"], "preprocessing": report["preprocessing"],
                               "zero_shot_top1_agreement": report["zero_shot"]["top1_agreement"],
                               "pass": report["pass"]}
                print(family, quant, json.dumps({k: (v["max_abs"], v["cosine_min"], v["cosine_mean"])
                                                 for k, v in report["components"].items()}), report["bundle_bytes"])
            for quant in ("fp16", "int8", "int4"):
                rows[quant]["size_vs_fp32"] = rows[quant]["bundle_bytes"] / rows["fp32"]["bundle_bytes"]
            results["families"][family] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
