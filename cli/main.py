"""``pocketvlm`` command line: one module per subcommand, imported only when that subcommand runs."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

SUBCOMMANDS = {
    "export": "export a Hugging Face checkpoint directory to a quantized bundle",
    "classify": "zero-shot classify images with a CLIP/SigLIP bundle",
    "embed": "L2-normalised image or text embeddings from a bundle",
    "caption": "caption an image with a VLM bundle, streaming the text",
    "ask": "answer a question about an image with a VLM bundle",
    "parity": "per-component report of a bundle against its source checkpoint",
    "bench": "latency, tokens/s, memory and the decode roofline of a bundle on this machine",
    "serve": "serve the web demo and a bundle on this machine (cross-origin isolated, allow-listed files only)",
    "selftest": "replay a bundle's golden record on this runtime: PASS/FAIL per stage with the measured error",
    "npu-check": "what Qualcomm's HTP compiler does with an ONNX bundle, per SoC: placement, reasons, compile, error",
    "demo": "export and run the embedded default models end to end (offline)",
}


class Progress:
    """Step messages on stderr with elapsed time, only when stderr is a terminal (quiet in pipes and CI logs)."""

    def __init__(self, force: bool = False) -> None:
        self.enabled = force or sys.stderr.isatty()
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pocketvlm",
                                     description="CLIP-style models and small VLMs to verified phone artifacts")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"pocketvlm.cli.{name.replace('-', '_')}_cmd")
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


# Import-time notices of packages the exporters pull in (torchao, a litert-torch dependency that transformers imports
# when present: its CUDA kernels cannot load on a CPU machine; torch's pytree deprecation notes): not the user's
# concern, and they would bury the CLI's own lines.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    from pocketvlm.runtime.errors import PocketVLMError

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"pocketvlm.cli.{args.command.replace('-', '_')}_cmd")
    try:
        return int(module.run(args) or 0)
    except PocketVLMError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was published (partial outputs are removed)", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
