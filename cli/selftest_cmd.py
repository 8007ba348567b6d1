"""pocketvlm selftest --bundle DIR [--json OUT]: replay the bundle's golden record on this runtime, stage by stage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pocketvlm.cli.common import add_runtime_options, injected_predictor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    required = parser.add_argument_group("required")
    required.add_argument("--bundle", required=True, help="bundle directory written by `pocketvlm export`")
    optional = parser.add_argument_group("optional")
    optional.add_argument("--json", type=Path, default=None, help="also write the stage results as JSON here")
    add_runtime_options(optional)


def run(args: argparse.Namespace) -> int:
    from pocketvlm.runtime.dual_encoder import DualEncoder
    from pocketvlm.runtime.manifest import load_bundle
    from pocketvlm.runtime.selftest import read_record, selftest
    from pocketvlm.runtime.vlm import VisionLanguageModel

    bundle = load_bundle(args.bundle)
    record = read_record(bundle)
    cls = VisionLanguageModel if bundle.manifest.get("task") == "image_text_to_text" else DualEncoder
    model = cls.load(bundle, threads=args.threads, max_pixels=args.max_pixels,
                    predictor=injected_predictor())
    results = selftest(model)
    for result in results:
        print(result.line())
    passed = all(r.passed for r in results)
    failed = [r.name for r in results if not r.passed]
    print(f"self-test {'PASS' if passed else 'FAIL'}: {record['family']} {record['quantization']} bundle, recorded "
          f"with {record['recorded_with']}" + (f"; failed stages: {', '.join(failed)}" if failed else ""))
    if args.json:
        args.json.write_text(json.dumps({"pass": passed, "stages": [r.__dict__ for r in results]}, indent=2) + "\n",
                             encoding="utf-8")
    return 0 if passed else 1
