"""pocketvlm demo [--cache DIR]: export and run the embedded default model end to end, offline."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def default_cache() -> Path:
    root = os.environ.get("POCKETVLM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "pocketvlm")
    return Path(root).expanduser() / "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    optional = parser.add_argument_group("optional")
    optional.add_argument("--cache", type=Path, default=None,
                          help="where checkpoints, bundles and the report go (default: $POCKETVLM_CACHE or "
                               "~/.cache/pocketvlm/demo); bundles there are reused on the next run")


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from pocketvlm.demo.run import format_markdown, run_demo

    cache = args.cache or default_cache()

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    result = run_demo(cache, say)
    print(format_markdown(result))
    print(f"\nreport: {cache / 'demo_report.md'} and {cache / 'demo_report.json'} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0
