"""What every target implements, and what the export loop hands it.

A target is one folder under ``export/targets/`` with a class that satisfies ``Target`` and one line in
``targets/registry.py``. The loop (``export/loop.py``) never branches on a target's name: it checks the request
against the target's capability table, then, per component, converts, calibrates where asked, quantizes into each
bundle and asks the target to describe the result for the manifest.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from pocketvlm.export.checkpoint import Checkpoint
from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.spec import ComponentDef, FamilySpec
from pocketvlm.export.static_shapes import StaticShapes
from pocketvlm.runtime.errors import ExportError, QuantizationError

# method -> knob -> the values the target accepts for it (None: any value QuantSpec itself accepts). A knob that is
# not listed for a method is refused when the request sets it away from QuantSpec's default.
Capabilities = Mapping[str, Mapping[str, tuple[Any, ...] | None]]
KNOBS = tuple(f.name for f in fields(QuantSpec) if f.name != "method")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    """Target settings that are not quantization: static shapes (LiteRT, Core ML, QNN), the Core ML deployment
    target, whether each Core ML component converts in its own process, the vision split (every target), the SoCs a
    QNN bundle is compiled for, the images / texts its static activation quantization is calibrated on, and the
    components that also get a MediaPipe Tasks variant (LiteRT: ``image_encoder``) with its input scale (None: the
    variant's default)."""

    shapes: StaticShapes = field(default_factory=StaticShapes)
    deployment_target: str = "iOS18"
    isolate: bool = True
    split_vision: bool = False
    socs: tuple[str, ...] = ("SM8650",)
    calibration_images: tuple[Path, ...] = ()
    calibration_texts: tuple[str, ...] = ()
    mediapipe: tuple[str, ...] = ()
    mediapipe_scale: int | None = None


@dataclass
class ExportContext:
    """One export run as the target sees it. ``model`` is the loaded HF model until ``release_model``; ``metadata``
    is each bundle's manifest metadata (tokenizer, preprocessing, ...); ``scratch`` holds the unquantized artifacts
    every bundle is quantized from; ``state`` is the target's own per-component data (example feeds, ...)."""

    checkpoint: Checkpoint
    family: FamilySpec
    options: ExportOptions
    model: Any
    config: Any
    metadata: list[dict[str, Any]]
    scratch: Path
    state: dict[str, Any] = field(default_factory=dict)

    def release_model(self) -> None:
        """Free the torch weights (later steps work from the artifacts in ``scratch``)."""
        self.model = None
        gc.collect()


class Target(Protocol):
    name: str  # --target NAME, and the manifest's "target"
    title: str  # for progress lines: "ONNX", "LiteRT", "Core ML"
    precision: str  # of the unquantized artifact every bundle is quantized from: "fp32", "fp16"
    suffix: str  # the artifact of one component: ".onnx", ".tflite", ".mlpackage"
    capabilities: Capabilities
    # True where calibration statistics come from the torch model (hooks), which must then run before the model is
    # released; False where they come from the converted fp32 artifact
    calibrates_on_model: bool
    splits_vision: bool  # offers --split-vision (the family's two stages: image_/vision_ frontend + transformer)
    mediapipe_variants: bool  # offers --mediapipe (a MediaPipe Tasks variant of the image tower)

    def check(self, spec: QuantSpec, component: str, options: ExportOptions) -> None:
        """Target rules beyond the capability table (e.g. iOS 18 for int4); raise a typed error by name."""

    def prepare(self, ctx: ExportContext) -> None:
        """Edit each bundle's metadata for this target (e.g. a fixed image grid) before anything is converted."""

    def convert(self, ctx: ExportContext, component: ComponentDef) -> None:
        """Write the unquantized artifact of ``component`` into ``ctx.scratch``."""

    def calibrate(self, ctx: ExportContext, component: ComponentDef, feeds: Any) -> Any:
        """Statistics for calibrated quantization (GPTQ Hessians) from recorded feeds."""

    def quantize(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, dest: Path,
                 stats: Any) -> dict[str, Any]:
        """Write ``dest`` from the scratch artifact per ``spec``; return what was done, for ``describe``."""

    def describe(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, path: Path, index: int,
                 done: dict[str, Any]) -> dict[str, Any]:
        """The manifest's record of component ``path`` of bundle ``index``."""

    def predictor(self) -> Any:
        """What runs this target's artifacts in the Python runtime on this machine, for the golden record: None for
        the runtime's own backend, else a ``runtime.coreml.PredictorFactory`` (Core ML off macOS: the reference
        evaluator)."""


def check_capabilities(target: Target, spec: QuantSpec, component: str, offered_by: list[str]) -> None:
    """Refuse, before anything is written, a method or knob the target's table does not list (never ignore one).
    ``offered_by``: the targets that do have ``spec.method``, for the message."""
    table = target.capabilities
    if spec.method not in table:
        elsewhere = f" (offered by --target {', '.join(offered_by)})" if offered_by else ""
        raise QuantizationError(f"{spec.method} ({component}) is not available for --target {target.name}{elsewhere}",
                                f"use one of {', '.join(table)} for --target {target.name}")
    accepted = table[spec.method]
    default = QuantSpec()
    for knob in KNOBS:
        value = getattr(spec, knob)
        if value == getattr(default, knob):
            continue
        if knob not in accepted:
            raise QuantizationError(f"quantization setting '{knob}' is not available for --target {target.name} "
                                    f"({spec.method}, {component})",
                                    f"drop '{knob}' from the config for --target {target.name}")
        allowed = accepted[knob]
        if allowed is not None and value not in allowed:
            raise QuantizationError(f"{knob} {value} is not offered by --target {target.name} ({component})",
                                    f"use one of {', '.join(map(str, allowed))} for --target {target.name}")


def capability_table(targets: Mapping[str, Target]) -> dict[str, dict[str, list[str]]]:
    """method -> target -> knobs, for the README and ``pocketvlm export --help``."""
    methods = dict.fromkeys(m for t in targets.values() for m in t.capabilities)
    return {m: {name: sorted(t.capabilities[m]) for name, t in targets.items() if m in t.capabilities}
            for m in methods}


def require_tool(module: str, target: str, extra: str) -> Any:
    """Import a target's converter, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"--target {target} needs {module}, which is not installed",
                          f'pip install "pocketvlm[{extra}]"') from exc
