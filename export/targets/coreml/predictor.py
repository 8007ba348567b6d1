"""Core ML itself as a runtime predictor (macOS only): coremltools' ``MLModel``.

coremltools is Core ML's Python binding and part of the ``coreml`` extra, so it lives here, not in the runtime: the
runtime's ``CoreMLSession`` takes any predictor (``runtime.coreml.Predictor``), and the CLI and ``load_runner``
inject this one on macOS (the reference evaluator elsewhere).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.runtime.errors import BundleError, InputError


class MLModelPredictor:
    """Core ML itself (macOS only): coremltools' ``MLModel``, one per function of the package, loaded on first use
    after the default one; ``compute_units`` ALL by default (ANE, GPU or CPU per op)."""

    def __init__(self, package: Path, compute_units: str = "ALL") -> None:
        try:
            import coremltools as ct
        except ImportError as exc:
            raise BundleError(f"{package.name} is a Core ML package, and running it needs coremltools (the Python "
                              "binding of Core ML), which is not installed", "pip install coremltools") from exc
        if compute_units not in ct.ComputeUnit.__members__:
            raise InputError(f"unknown Core ML compute units {compute_units!r}",
                             f"use one of {', '.join(ct.ComputeUnit.__members__)}")
        self._ct, self._path, self._units = ct, package, ct.ComputeUnit[compute_units]
        self._models: dict[str | None, Any] = {}
        self.name = f"coremltools {ct.__version__} MLModel ({compute_units})"
        self._load(None)

    def _load(self, function: str | None) -> Any:
        if function not in self._models:
            kwargs = {"function_name": function} if function else {}
            try:
                self._models[function] = self._ct.models.MLModel(str(self._path), compute_units=self._units, **kwargs)
            except Exception as exc:  # Core ML reports compile and load failures as RuntimeError / generic ones
                raise BundleError(f"Core ML cannot load {self._path.name}: {str(exc).splitlines()[0]}",
                                  "re-export the bundle, or update macOS to the manifest's deployment target") from exc
        return self._models[function]

    def predict(self, feeds: dict[str, np.ndarray], function: str | None = None,
                state: Any = None) -> dict[str, np.ndarray]:
        model = self._load(function)
        outputs = model.predict(feeds, state=state) if state is not None else model.predict(feeds)
        return {k: np.asarray(v) for k, v in outputs.items()}

    def make_state(self) -> Any:
        # the functions of a multifunction package declare the same states, so one MLState serves both
        return self._load(None).make_state()


def platform_predictor() -> Any:
    """The predictor factory that runs Core ML packages on this machine: Core ML itself on macOS, else None (the
    runtime then refuses the bundle with a typed error)."""
    return MLModelPredictor if platform.system() == "Darwin" else None
