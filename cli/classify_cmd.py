"""pocketvlm classify --bundle DIR --image FILE --labels "a cat,a dog" """

from __future__ import annotations

import argparse
import json

from pocketvlm.cli.common import add_runtime_options, injected_predictor, parse_labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    required = parser.add_argument_group("required")
    required.add_argument("--bundle", required=True, help="bundle directory written by `pocketvlm export`")
    required.add_argument("--image", required=True, action="append", help="image file (repeat for several)")
    required.add_argument("--labels", required=True, help="comma-separated labels, e.g. 'a cat,a dog'")
    optional = parser.add_argument_group("optional")
    optional.add_argument("--template", default=None, help="prompt template with {} (default: the family's)")
    optional.add_argument("--top", type=int, default=5, help="labels to show per image (default 5)")
    optional.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_runtime_options(optional)


def run(args: argparse.Namespace) -> int:
    from pocketvlm.runtime.dual_encoder import DualEncoder

    labels = parse_labels(args.labels)
    model = DualEncoder.load(args.bundle, threads=args.threads, max_pixels=args.max_pixels,
                            predictor=injected_predictor())
    results = model.classify(args.image, labels, template=args.template)
    if args.json:
        print(json.dumps([{"image": image, "predictions": [p.__dict__ for p in preds]}
                          for image, preds in zip(args.image, results)], indent=2))
        return 0
    for image, preds in zip(args.image, results):
        print(image)
        for pred in preds[: max(args.top, 1)]:
            print(f"  {pred.score:7.2%}  {pred.label}")
    return 0
