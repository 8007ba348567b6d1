"""The target registry: one line per target. A target is one folder under ``export/targets/`` whose class satisfies
``targets.base.Target``; the export loop finds it here by name and never branches on it."""

from __future__ import annotations

from pocketvlm.export.targets.base import Target
from pocketvlm.export.targets.coreml.target import CoreMLTarget
from pocketvlm.export.targets.executorch.target import ExecuTorchTarget
from pocketvlm.export.targets.onnx.target import OnnxTarget
from pocketvlm.export.targets.qnn.target import QnnTarget
from pocketvlm.export.targets.tflite.target import TFLiteTarget
from pocketvlm.runtime.errors import ExportError

TARGETS: dict[str, Target] = {
    "onnx": OnnxTarget(),
    "tflite": TFLiteTarget(),
    "coreml": CoreMLTarget(),
    "qnn": QnnTarget(),
    "executorch": ExecuTorchTarget(),
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ExportError(f"target '{name}' is not available in this version", f"use --target {' or '.join(TARGETS)}")
    return TARGETS[name]


def offered_by(method: str) -> list[str]:
    """The targets whose capability table has ``method``."""
    return [name for name, target in TARGETS.items() if method in target.capabilities]
