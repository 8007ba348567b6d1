"""Typed errors shared by the runtime, the exporter and the CLI.

Every error names the problem and the fix in one line, so the CLI can print ``error: <problem> (fix: <hint>)`` and
exit with code 2 instead of a traceback. The exporter raises these too (it may import the runtime; never the reverse).
"""

from __future__ import annotations


class PocketVLMError(Exception):
    """Base class: a user-facing problem with a one-line message and a suggested fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def one_line(self) -> str:
        text = f"{self.problem} (fix: {self.fix})"
        return " ".join(text.split())


class ModelDirError(PocketVLMError):
    """The model directory is missing or is not a Hugging Face checkpoint."""


class UnsupportedModelError(PocketVLMError):
    """The checkpoint's model_type (or architecture) is not a registered family."""


class RemoteCodeError(PocketVLMError):
    """The checkpoint needs trust_remote_code; pocketvlm never executes checkpoint code."""


class TokenizerError(PocketVLMError):
    """The checkpoint's tokenizer cannot be turned into a portable tokenizer.json."""


class ImageError(PocketVLMError):
    """An input image cannot be read: missing, not an image, corrupt or truncated."""


class ImageTooLargeError(ImageError):
    """An input image exceeds the pixel limit (decompression-bomb guard)."""


class BundleError(PocketVLMError):
    """A bundle directory is missing, incomplete or malformed."""


class BundleIntegrityError(BundleError):
    """A bundle file does not match the sha256 recorded in its manifest."""


class BundleVersionError(BundleError):
    """The bundle was written with a schema version this runtime does not understand."""


class QuantizationError(PocketVLMError):
    """A quantization request is invalid or unsupported for a component."""


class ExportError(PocketVLMError):
    """Export of a component failed."""


class InferenceError(PocketVLMError):
    """A backend failed while running a component (out-of-range ids, shapes the graph does not take, ...)."""


class InputError(PocketVLMError):
    """A runtime input (labels, text, options) is invalid."""


class NpuError(PocketVLMError):
    """The NPU path cannot run or compile: the vendor plugin is missing, a SoC is unknown, or the backend refused."""
