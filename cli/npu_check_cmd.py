"""pocketvlm npu-check --bundle DIR --soc SM8650[,SM8750] [--pin dim=N,...] [--image-size N] [--component C]
[--json OUT]"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pocketvlm.runtime.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    required = parser.add_argument_group("required")
    required.add_argument("--bundle", required=True, help="an ONNX bundle directory written by `pocketvlm export`")
    required.add_argument("--soc", required=True, help="Snapdragon part number(s), comma-separated: SM8650,SM8750")
    optional = parser.add_argument_group("optional")
    optional.add_argument("--pin", default=None,
                          help="dims to pin beyond what the golden task's feeds give, e.g. 'sequence=64,past=512'")
    optional.add_argument("--image-size", type=int, default=None,
                          help="resize the golden image to this square side before recording the feeds")
    optional.add_argument("--component", default=None,
                          help="only these components, comma-separated (default: every component)")
    optional.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    optional.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")


def parse_pins(text: str | None) -> dict[str, int]:
    pins: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        if not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise InputError(f"--pin entry {part.strip()!r} is not dim=positive integer", "write e.g. --pin past=512")
        pins[name.strip()] = int(value)
    return pins


def run(args: argparse.Namespace) -> int:
    from pocketvlm.cli.main import Progress
    from pocketvlm.export.npu.check import format_report, npu_check
    from pocketvlm.runtime.qnn import parse_socs, plugin

    socs = parse_socs(args.soc)
    pins = parse_pins(args.pin)
    if args.image_size is not None and args.image_size < 1:
        raise InputError(f"--image-size {args.image_size} is not a positive size", "pass e.g. --image-size 448")
    plugin()  # a missing plugin is one line naming the extra, before any work
    only = tuple(c.strip() for c in (args.component or "").split(",") if c.strip())
    report = npu_check(Path(args.bundle), socs, pins, args.image_size, Progress(args.progress), only)
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0
