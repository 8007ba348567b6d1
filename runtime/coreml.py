"""Core ML backend session: the runtime's named-tensor contract over a static-shape ``.mlpackage``.

A Core ML component is executed by a *predictor* the caller injects (``open_session(..., predictor=...)``): the
runtime itself imports nothing of Core ML's Python tooling, which belongs to the ``coreml`` extra. On macOS the CLI
injects Core ML itself (``export.targets.coreml.predictor.MLModelPredictor``, coremltools' ``MLModel``);
verification injects the exporter's reference evaluator, which is how ``pocketvlm parity`` checks Core ML bundles on
Linux. With nothing injected, a Core ML bundle is refused with a typed error.

Encoders are exported at batch 1 (the Neural Engine wants static shapes): a larger batch runs row by row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pocketvlm.runtime.errors import BundleError, InputError
from pocketvlm.runtime.static_decode import check_call, chunks, run_rows

_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64, "bool": np.bool_}


class Predictor(Protocol):
    """Runs one package: ``function`` picks a function of a multifunction package (None: its default), ``state``
    is an object from ``make_state`` (stateful packages: the decoder's KV cache). ``name`` says what runs it."""

    name: str

    def predict(self, feeds: dict[str, np.ndarray], function: str | None = None,
                state: Any = None) -> dict[str, np.ndarray]: ...

    def make_state(self) -> Any: ...


PredictorFactory = Callable[[Path], "Predictor | None"]


class CoreMLSession:
    """One Core ML component: static input shapes and dtypes from the manifest, float32 outputs; encoders loop over
    a batch, the stateful ``text_decoder`` runs calls as prefill / decode chunks over its own KV cache."""

    reentrant = False  # a predictor (and its state) serves one call at a time (models take turns: backends.turns)
    engine, target = "Core ML", "coreml"
    padded = True  # the decoder's prefill chunks are padded to the prefill function's static length

    def __init__(self, path: Path, component: dict[str, Any], predictor: Predictor | None = None) -> None:
        self.input_names = tuple(t["name"] for t in component["inputs"])
        self.output_names = tuple(t["name"] for t in component["outputs"])
        self.static = dict(component.get("static") or {})
        signatures = self.static.get("signatures") or {}
        dtypes = self.static.get("dtypes") or {}
        self.functions = {fn: {name: (tuple(int(d) for d in shape), _DTYPES[dtypes.get(name, "float32")])
                               for name, shape in shapes.items()} for fn, shapes in signatures.items()}
        self.owns_kv_cache = bool(self.static.get("states") or self.static.get("mutable_buffers"))
        if not self.functions or (len(self.functions) != 1 and not self.owns_kv_cache):
            raise BundleError(f"{path.name}: the manifest has {len(self.functions)} static signatures for this "
                              f"{self.engine} component", f"re-export the bundle with --target {self.target}")
        self.inputs = next(iter(self.functions.values()))
        if predictor is None:
            raise self.missing_predictor(path)
        self._predictor = predictor
        self.backend = predictor.name
        self._state: Any = None
        self._filled = 0

    @staticmethod
    def missing_predictor(path: Path) -> BundleError:
        return BundleError(f"{path.name} is a Core ML package: Core ML runs only on macOS and iOS, through a "
                           "predictor the caller passes",
                           "on a Mac use the pocketvlm CLI (pip install 'pocketvlm[coreml]') or pass "
                           "predictor=MLModelPredictor; on Linux check it with 'pocketvlm parity'")

    def reset(self) -> None:
        """A new sequence: a fresh state (the decoder's KV cache); nothing to do for an encoder."""
        if self.owns_kv_cache:
            self._state, self._filled = self._predictor.make_state(), 0

    def _call(self, feeds: dict[str, np.ndarray], function: str | None = None) -> dict[str, np.ndarray]:
        cast = {}
        inputs = self.functions[function] if function else self.inputs
        for name, (shape, dtype) in inputs.items():
            value = np.asarray(feeds[name])
            if not self.fits(name, value.shape, shape):
                raise InputError(f"input '{name}' has shape {list(value.shape)}, but this {self.engine} component is "
                                 f"fixed at {list(shape)}",
                                 f"re-export with --target {self.target} and shapes that cover it")
            cast[name] = np.ascontiguousarray(value, dtype=dtype)
        outputs = self.predict(cast, function)
        return {name: np.asarray(outputs[name], dtype=np.float32) for name in self.output_names}

    def fits(self, name: str, shape: tuple[int, ...], static: tuple[int, ...]) -> bool:
        return shape == static

    def predict(self, feeds: dict[str, np.ndarray], function: str | None) -> dict[str, np.ndarray]:
        return self._predictor.predict(feeds, function, self._state) if function else self._predictor.predict(feeds)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.owns_kv_cache:
            return self._run_decoder(feeds)
        shapes = {name: shape for name, (shape, _) in self.inputs.items()}
        return run_rows(self._call, feeds, self.static.get("loop_inputs") or [], shapes, self.output_names)

    def _run_decoder(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The KV cache is the package's state: the runtime's ``attention_mask`` says how many tokens the caller
        believes are cached, which must match this session's count (``reset()`` starts a new sequence)."""
        capacity, image_token = int(self.static["kv_capacity"]), int(self.static["image_token_id"])
        ids = np.asarray(feeds["input_ids"])
        claimed = int(np.asarray(feeds["attention_mask"])[0, : -ids.shape[1]].sum())
        if self._state is None:
            self.reset()
        if claimed != self._filled:
            raise InputError(f"the caller's KV cache holds {claimed} tokens but this {self.engine} decoder's state "
                             f"holds {self._filled}", "call reset() before each new sequence, and run one at a time")
        check_call(ids, self._filled, capacity, self.engine)
        logits = None
        for chunk in chunks(feeds, int(self.static["prefill_length"]), image_token, self.padded):
            size = chunk.pad + chunk.real
            mask = np.zeros((1, capacity + size), np.int32)
            mask[:, : self._filled] = 1
            mask[:, capacity + chunk.pad :] = 1
            slots = np.concatenate([np.full(chunk.pad, -1), np.arange(self._filled, self._filled + chunk.real)])
            out = self._call({**chunk.feeds, "attention_mask": mask, "cache_position": slots.astype(np.int32)},
                             chunk.entry)
            logits = out["logits"]
            self._filled += chunk.real
        return {"logits": logits}
