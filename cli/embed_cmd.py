"""pocketvlm embed --bundle DIR (--image FILE ... | --text TEXT ...) [--out FILE.npy]"""

from __future__ import annotations

import argparse
import json

from pocketvlm.cli.common import add_runtime_options, injected_predictor
from pocketvlm.runtime.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    required = parser.add_argument_group("required")
    required.add_argument("--bundle", required=True, help="bundle directory written by `pocketvlm export`")
    what = required.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", action="append", help="image file (repeat for several)")
    what.add_argument("--text", action="append", help="text (repeat for several)")
    optional = parser.add_argument_group("optional")
    optional.add_argument("--out", help="write the embeddings as a .npy file instead of printing JSON")
    add_runtime_options(optional)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from pocketvlm.runtime.dual_encoder import DualEncoder

    if args.out and not args.out.endswith(".npy"):
        raise InputError(f"--out {args.out} must end in .npy", "pass a path like embeddings.npy")
    model = DualEncoder.load(args.bundle, threads=args.threads, max_pixels=args.max_pixels,
                            predictor=injected_predictor())
    items = args.image or args.text
    vectors = model.embed_image(items) if args.image else model.embed_text(items)
    if args.out:
        np.save(args.out, vectors.astype(np.float32))
        print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {args.out}")
    else:
        print(json.dumps([{"input": item, "embedding": [round(float(x), 6) for x in row]}
                          for item, row in zip(items, vectors)]))
    return 0
