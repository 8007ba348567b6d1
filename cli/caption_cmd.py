"""pocketvlm caption --bundle DIR --image FILE [--prompt TEXT] [--max-new-tokens N]: streams to the terminal."""

from __future__ import annotations

import argparse
import sys

from pocketvlm.cli.common import add_runtime_options, injected_predictor
from pocketvlm.runtime.vlm import DEFAULT_CAPTION_PROMPT


def add_arguments(parser: argparse.ArgumentParser, prompt_required: bool = False) -> None:
    required = parser.add_argument_group("required")
    required.add_argument("--bundle", required=True, help="VLM bundle directory written by `pocketvlm export`")
    required.add_argument("--image", required=True, help="image file")
    if prompt_required:
        required.add_argument("--question", "--prompt", dest="prompt", required=True, help="question about the image")
    optional = parser.add_argument_group("optional")
    if not prompt_required:
        optional.add_argument("--prompt", default=DEFAULT_CAPTION_PROMPT,
                              help=f"instruction (default: {DEFAULT_CAPTION_PROMPT!r})")
    optional.add_argument("--max-new-tokens", type=int, default=64, help="stop after this many tokens (default 64)")
    optional.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    optional.add_argument("--temperature", type=float, default=1.0)
    optional.add_argument("--top-k", type=int, default=0)
    optional.add_argument("--top-p", type=float, default=1.0)
    optional.add_argument("--seed", type=int, default=None)
    optional.add_argument("--stats", action="store_true", help="print timings and token counts to stderr")
    add_runtime_options(optional)


def run(args: argparse.Namespace) -> int:
    from pocketvlm.runtime.generation import GenerationConfig
    from pocketvlm.runtime.vlm import VisionLanguageModel

    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    model = VisionLanguageModel.load(args.bundle, threads=args.threads, max_pixels=args.max_pixels,
                                    predictor=injected_predictor())

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = model.generate(args.image, args.prompt, config, on_text=stream)
    sys.stdout.write("\n")
    if args.stats:
        t = result.timings
        rate = t["decode_tokens"] / t["decode_s"] if t.get("decode_s") else float("nan")
        print(f"prompt {result.prompt_tokens} tokens, generated {len(result.token_ids)} ({result.stop_reason}); "
              f"image {t['image_encode_s'] * 1e3:.1f} ms, prefill {t['prefill_s'] * 1e3:.1f} ms, "
              f"decode {rate:.1f} tokens/s" + (" (HTP emulator on this machine: not latency)" if any(
                  "emulator" in session.backend for session in model.sessions.values()) else ""), file=sys.stderr)
    return 0
