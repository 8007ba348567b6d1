"""LiteRT (TFLite) backend session: the runtime's dynamic-shape contract over static-shape signatures.

A ``.tflite`` component has fixed shapes (phone delegates want them), while the runtime speaks in the same named,
dynamic tensors for every backend. This adapter closes the gap without changing the runtime's generation loop:

- encoders: a component exported for batch 1 runs once per row of a larger batch (``loop`` axis 0), outputs
  concatenated; any other shape mismatch is an ``InputError`` naming the input and the bundle's shape.
- ``text_decoder``: two signatures, ``prefill_N`` and ``decode``, over a fixed KV capacity ``C``. The session owns
  the only KV cache (``owns_kv_cache``, as Core ML's stateful decoder does): one ``C``-slot buffer per layer and kind,
  allocated once in the signatures' dtype and filled in place with the entries each call returns, so the runtime only
  tracks lengths and nothing is copied per step on the Python side (LiteRT's signature runner still copies its
  inputs into the interpreter's tensors on every call). A prompt is run in chunks of ``N`` tokens, each chunk padded
  on the left with masked tokens (so the last position, whose logits are returned, is real); the image rows each
  chunk needs are sliced from ``image_embeds`` by counting image tokens. ``reset()`` starts a new sequence.

Needs only numpy and ``ai-edge-litert`` (XNNPACK on CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.runtime.errors import BundleError, InputError
from pocketvlm.runtime.static_decode import DECODE, StaticKVCache, run_rows


class _Runner:
    """One signature: its static input shapes and dtypes, and a call that casts feeds to them."""

    def __init__(self, interpreter: Any, name: str) -> None:
        self.name = name
        self._runner = interpreter.get_signature_runner(name)
        self.inputs = {key: (tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]))
                       for key, detail in self._runner.get_input_details().items()}

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {}
        for key, (shape, dtype) in self.inputs.items():
            value = np.asarray(feeds[key])
            if value.shape != shape:
                raise InputError(f"input '{key}' has shape {list(value.shape)}, but signature '{self.name}' of this "
                                 f"LiteRT bundle is fixed at {list(shape)}",
                                 "re-export with --target tflite and static shapes that cover this input")
            cast[key] = np.ascontiguousarray(value, dtype=dtype)
        outputs = self._runner(**cast)
        return {key: value.astype(np.float32) if value.dtype == np.float16 else value for key, value in outputs.items()}


class LiteRTSession:
    """A LiteRT interpreter over one bundle component (see the module docstring for the shape adapter)."""

    reentrant = False  # an interpreter's tensors are its own: one call at a time (models take turns: backends.turns)

    def __init__(self, path: Path, component: dict[str, Any], threads: int = 0) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise BundleError("this bundle's components are .tflite files and ai-edge-litert is not installed",
                              'pip install "pocketvlm[tflite]"') from exc
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        except (RuntimeError, ValueError) as exc:
            raise BundleError(f"LiteRT cannot load {path.name}: {str(exc).splitlines()[0]}",
                              "re-export the bundle, or install the ai-edge-litert version in its manifest") from exc
        self.input_names = tuple(t["name"] for t in component["inputs"])
        self.output_names = tuple(t["name"] for t in component["outputs"])
        self.static = dict(component["static"])
        self.runners = {name: _Runner(self._interpreter, name) for name in self._interpreter.get_signature_list()}
        self.backend = f"ai-edge-litert {_version()} XNNPACK (CPU)"
        self.owns_kv_cache = DECODE in self.runners
        self.cache = StaticKVCache(self.runners[DECODE].inputs, int(self.static["kv_capacity"]), "LiteRT",
                                   self.runners[DECODE].inputs["attention_mask"][1]) if self.owns_kv_cache else None

    def reset(self) -> None:
        """A new sequence (decoders); nothing to do for an encoder."""
        if self.cache is not None:
            self.cache.reset()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.cache is not None:
            return self.cache.run(feeds, dict(self.runners), int(self.static["image_token_id"]))
        (runner,) = self.runners.values()
        shapes = {k: shape for k, (shape, _) in runner.inputs.items()}
        return run_rows(runner, feeds, self.static.get("loop_inputs") or [], shapes, self.output_names)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return "(version unknown)"
