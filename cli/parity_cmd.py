"""pocketvlm parity --bundle DIR --model DIR [--json FILE] [--soc SM8650,...]

Prints one PASS/FAIL line per check (per component, per end-to-end check) with the measured figure and the family's
registered threshold for its quantization method. Exit status: 0 when every check passes, 1 when one fails, 2 on a
typed input error (a bundle that does not load, a checkpoint it was not exported from). ``--soc`` adds the NPU
section of an ONNX bundle: what Qualcomm's HTP compiler does with each component (``pocketvlm npu-check``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pocketvlm.cli.common import parse_labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    required = parser.add_argument_group("required")
    required.add_argument("--bundle", required=True, help="bundle directory written by `pocketvlm export`")
    required.add_argument("--model", required=True, help="the checkpoint directory the bundle was exported from")
    optional = parser.add_argument_group("optional")
    optional.add_argument("--json", dest="json_path", help="also write the report as JSON to this file")
    optional.add_argument("--labels", help="comma-separated zero-shot labels (default: one per test photo)")
    optional.add_argument("--steps", type=int, default=16, help="VLM bundles: tokens generated per photo (default 16)")
    optional.add_argument("--soc", default=None,
                          help="ONNX bundles: add the NPU section, Qualcomm's HTP compiler on each component for these "
                          "SoCs (as `pocketvlm npu-check`; needs pocketvlm[npu])")


def run(args: argparse.Namespace) -> int:
    from pocketvlm.runtime.manifest import load_bundle
    from pocketvlm.runtime.qnn import parse_socs, plugin

    socs = parse_socs(args.soc) if args.soc else ()
    if socs:
        plugin()  # a missing plugin is one line naming the extra, before the parity run
    if load_bundle(args.bundle).manifest.get("task") == "image_text_to_text":
        from pocketvlm.export.verify.vlm_parity import format_vlm_table, vlm_parity

        report = vlm_parity(args.bundle, args.model, steps=args.steps)
        print(format_vlm_table(report))
    else:
        from pocketvlm.export.verify.parity import dual_encoder_parity, format_table

        labels = parse_labels(args.labels) if args.labels else None
        report = dual_encoder_parity(args.bundle, args.model, labels=labels)
        print(format_table(report))
    if socs:
        from pocketvlm.export.npu.check import format_report, npu_check

        report["npu"] = npu_check(Path(args.bundle), socs)
        print(format_report(report["npu"]))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report written: {args.json_path}")
    return 0 if report["pass"] else 1
