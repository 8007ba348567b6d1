"""pocketvlm bench --bundle DIR [--image FILE] [--runs N] [--warmup N] [--json OUT]: latency, throughput, memory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pocketvlm.cli.common import add_runtime_options, injected_predictor
from pocketvlm.runtime.errors import InputError
from pocketvlm.runtime.vlm import DEFAULT_CAPTION_PROMPT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    required = parser.add_argument_group("required")
    required.add_argument("--bundle", required=True, help="bundle directory written by `pocketvlm export`")
    optional = parser.add_argument_group("optional")
    optional.add_argument("--image", default=None,
                          help="image file (default: a fixed 448x448 synthetic test pattern)")
    optional.add_argument("--prompt", default=DEFAULT_CAPTION_PROMPT,
                          help=f"VLM prompt (default: {DEFAULT_CAPTION_PROMPT!r})")
    optional.add_argument("--new-tokens", type=int, default=32, help="VLM tokens to decode per run (default 32; "
                                                                      "end-of-sequence is ignored)")
    optional.add_argument("--runs", type=int, default=10, help="timed runs (default 10)")
    optional.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (default 2)")
    optional.add_argument("--no-bandwidth", action="store_true", help="skip the memory-bandwidth measurement")
    optional.add_argument("--json", type=Path, default=None, help="write the result file here")
    add_runtime_options(optional)


def synthetic_image() -> object:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:448, 0:448]
    rgb = np.stack([x * 255 // 447, y * 255 // 447, ((x // 32 + y // 32) % 2) * 255], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def refuse_emulated(bundle: Path) -> None:
    """A QNN bundle off a phone runs on the HTP emulator, whose timing is 100-300x a CPU's and no phone's latency."""
    import platform

    from pocketvlm.runtime.manifest import load_bundle

    if load_bundle(bundle).manifest["target"] == "qnn" and platform.machine() in ("x86_64", "AMD64"):
        raise InputError(f"{bundle} is a QNN bundle: on this {platform.machine()} machine it runs on the HTP "
                         "emulator, whose timings are not latency", "bench it on the phone, or bench the ONNX bundle "
                         "of the same model here (`pocketvlm npu-check` reports what the HTP compiler does with it)")


def run(args: argparse.Namespace) -> int:
    from pocketvlm.runtime.bench import run_bench

    if args.runs < 1 or args.warmup < 0 or args.new_tokens < 2:
        raise InputError(f"--runs {args.runs} / --warmup {args.warmup} / --new-tokens {args.new_tokens} out of range",
                         "use --runs 1 or more, --warmup 0 or more, --new-tokens 2 or more")
    if args.json is not None and args.json.is_dir():
        raise InputError(f"--json {args.json} is a directory", "pass a file path such as result.json")
    refuse_emulated(Path(args.bundle))
    image = args.image if args.image is not None else synthetic_image()

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = run_bench(Path(args.bundle), image, args.prompt, args.new_tokens, args.runs, args.warmup, args.threads,
                       bandwidth=not args.no_bandwidth, say=say, predictor=injected_predictor())
    figures = result["figures"]
    for name, stats in figures["components"].items():
        print(f"{name:24s} median {stats['median_ms']:9.2f} ms   p90 {stats['p90_ms']:9.2f} ms")
    if "decode_tokens_per_s" in figures:
        print(f"time to first token      {figures['time_to_first_token_ms']:9.2f} ms\n"
              f"prefill                  {figures['prefill_tokens_per_s']:9.1f} tokens/s "
              f"({figures['prompt_tokens']} tokens)\n"
              f"decode                   {figures['decode_tokens_per_s']:9.1f} tokens/s")
    if "roofline" in result:
        roof = result["roofline"]
        print(f"roofline                 {roof['roofline_tokens_per_s']:9.1f} tokens/s at "
              f"{roof['bandwidth_gbs']:.1f} GB/s ({roof['fraction_of_roofline'] * 100:.0f}% reached)")
    print(f"bundle {result['bundle']['bytes'] / 1e6:.1f} MB, peak RSS {result['peak_rss_bytes'] / 1e6:.0f} MB")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
