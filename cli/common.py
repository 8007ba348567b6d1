"""Options and parsing shared by the runtime subcommands."""

from __future__ import annotations

import argparse
import platform
from typing import Any

from pocketvlm.runtime.errors import InputError
from pocketvlm.runtime.image import DEFAULT_MAX_PIXELS


def add_runtime_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    group.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                       help=f"refuse images larger than this many pixels (default {DEFAULT_MAX_PIXELS:,})")


def parse_labels(text: str) -> list[str]:
    labels = [label.strip() for label in text.split(",")]
    if not any(labels) or any(not label for label in labels):
        raise InputError(f"--labels {text!r} has an empty label", "pass comma-separated labels, e.g. 'a cat,a dog'")
    return labels


def core_ml_predictor() -> Any:
    """The predictor for Core ML bundles: Core ML itself on macOS (coremltools, the ``coreml`` extra, on the export
    side so that the runtime stays thin); None elsewhere, where the runtime refuses Core ML bundles by name."""
    if platform.system() != "Darwin":
        return None
    from pocketvlm.export.targets.coreml.predictor import MLModelPredictor

    return MLModelPredictor


def injected_predictor() -> Any:
    """The predictor factory the runtime commands inject, picked per component by its format: ``.pte`` programs on
    ``executorch.runtime`` (the ``executorch`` extra, on the export side: it needs torch), Core ML packages on
    ``core_ml_predictor``'s choice. The export side is imported only when such a component is opened."""
    fallback = core_ml_predictor()

    def make(path: Any) -> Any:
        from pocketvlm.export.targets.executorch.predictor import local_predictor

        return local_predictor(fallback)(path)

    return make
