"""pocketvlm ask --bundle DIR --image FILE --question TEXT: answer a question about an image."""

from __future__ import annotations

import argparse

from pocketvlm.cli import caption_cmd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    caption_cmd.add_arguments(parser, prompt_required=True)


def run(args: argparse.Namespace) -> int:
    return caption_cmd.run(args)
