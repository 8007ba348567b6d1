"""Core ML backend session: the runtime's named-tensor contract over a static-shape ``.mlpackage``.

A Core ML component is executed by a *predictor*: on macOS, Core ML itself (``coremltools.models.MLModel``, the
only Python binding of the Core ML framework; imported lazily and only there); anywhere, any object with the same
small interface, such as the exporter's reference evaluator (``pocketvlm.export.coreml_check``), which is how
``pocketvlm parity`` checks Core ML bundles on Linux. Pre- and post-processing, tokenization and the batch loop are
the runtime's own, exactly as for ONNX and LiteRT.

Encoders are exported at batch 1 (the Neural Engine wants static shapes): a larger batch runs row by row.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pocketvlm.runtime.backends import run_rows
from pocketvlm.runtime.errors import BundleError, InputError

_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64, "bool": np.bool_}


class Predictor(Protocol):
    name: str

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class CoreMLFramework:
    """Core ML on macOS through coremltools' ``MLModel`` (compute units: all, i.e. ANE, GPU or CPU per op)."""

    def __init__(self, path: Path, compute_units: str = "ALL") -> None:
        if sys.platform != "darwin":
            raise BundleError(f"{path.name} is a Core ML package, and Core ML runs only on macOS and iOS",
                              "run it on a Mac or an iPhone; on Linux check it with 'pocketvlm parity', which "
                              "uses pocketvlm's reference evaluator")
        try:
            import coremltools as ct  # the Core ML framework's Python binding (macOS only at run time)
        except ImportError as exc:
            raise BundleError("this bundle's components are Core ML packages and coremltools is not installed",
                              'pip install "pocketvlm[coreml]"') from exc
        try:
            self._model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        except Exception as exc:  # Core ML reports compile and load failures as RuntimeError / generic exceptions
            raise BundleError(f"Core ML cannot load {path.name}: {str(exc).splitlines()[0]}",
                              "re-export the bundle, or update macOS to the deployment target in the manifest") from exc
        self.name = f"Core ML ({compute_units})"

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._model.predict(feeds).items()}


class CoreMLSession:
    """One Core ML component: static input shapes and dtypes from the manifest, a batch loop, float32 outputs."""

    def __init__(self, path: Path, component: dict[str, Any], predictor: Predictor | None = None) -> None:
        self.input_names = tuple(t["name"] for t in component["inputs"])
        self.output_names = tuple(t["name"] for t in component["outputs"])
        self.static = dict(component.get("static") or {})
        signatures = self.static.get("signatures") or {}
        if len(signatures) != 1:
            raise BundleError(f"{path.name}: a Core ML component needs exactly one static signature in the manifest, "
                              f"found {len(signatures)}", "re-export the bundle with --target coreml")
        (shapes,) = signatures.values()
        dtypes = self.static.get("dtypes") or {}
        self.inputs = {name: (tuple(int(d) for d in shape), _DTYPES[dtypes.get(name, "float32")])
                       for name, shape in shapes.items()}
        self._predictor = predictor or CoreMLFramework(path)
        self.providers = (self._predictor.name,)

    def _call(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {}
        for name, (shape, dtype) in self.inputs.items():
            value = np.asarray(feeds[name])
            if value.shape != shape:
                raise InputError(f"input '{name}' has shape {list(value.shape)}, but this Core ML component is fixed "
                                 f"at {list(shape)}", "re-export with --target coreml and shapes that cover it")
            cast[name] = np.ascontiguousarray(value, dtype=dtype)
        outputs = self._predictor.predict(cast)
        return {name: np.asarray(outputs[name], dtype=np.float32) for name in self.output_names}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = {name: shape for name, (shape, _) in self.inputs.items()}
        return run_rows(self._call, feeds, self.static.get("loop_inputs") or [], shapes, self.output_names)
