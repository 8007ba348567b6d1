"""LiteRT (TFLite) backend session: the runtime's dynamic-shape contract over static-shape signatures.

A ``.tflite`` component has fixed shapes (phone delegates want them), while the runtime speaks in the same named,
dynamic tensors for every backend. This adapter closes the gap without changing the runtime's generation loop:

- encoders: a component exported for batch 1 runs once per row of a larger batch (``loop`` axis 0), outputs
  concatenated; any other shape mismatch is an ``InputError`` naming the input and the bundle's shape.
- ``text_decoder``: two signatures, ``prefill_N`` and ``decode``, over a fixed KV capacity ``C``. The runtime's
  buffers (any capacity up to ``C``) are copied into ``C``-slot buffers; a prompt is run in chunks of ``N`` tokens,
  each chunk padded on the left with masked tokens (so the last position, whose logits are returned, is real); the
  image rows each chunk needs are sliced from ``image_embeds`` by counting image tokens. Only the real tokens' new
  KV entries are returned, exactly as the ONNX graph returns them. When the next call passes the same buffer arrays
  grown by exactly those entries (as the runtime's ``KVCache`` does), the ``C``-slot copies are reused instead of
  copied again; any other buffers (new arrays, another fill count) are copied afresh.

Needs only numpy and ``ai-edge-litert`` (XNNPACK on CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.runtime.backends import run_rows
from pocketvlm.runtime.errors import BundleError, InputError
from pocketvlm.runtime.static_decode import DECODE, PREFILL_PREFIX, check_call, chunks


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
        self.providers = ("LiteRT XNNPACK (CPU)",)
        # decoder: (caller's past arrays, C-slot copies, mask, filled) after the last call
        self._kv: tuple[list[Any], dict[str, np.ndarray], np.ndarray, int] | None = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if DECODE in self.runners:
            return self._run_decoder(feeds)
        (runner,) = self.runners.values()
        shapes = {k: shape for k, (shape, _) in runner.inputs.items()}
        return run_rows(runner, feeds, self.static.get("loop_inputs") or [], shapes, self.output_names)

    # -- text_decoder --------------------------------------------------------------------------------------------------
    def _run_decoder(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        capacity, image_token = int(self.static["kv_capacity"]), int(self.static["image_token_id"])
        prefill = next(r for name, r in self.runners.items() if name.startswith(PREFILL_PREFIX))
        prefill_length = prefill.inputs["input_ids"][0][1]
        ids = np.asarray(feeds["input_ids"])
        past_names = [n for n in self.input_names if n.startswith("past_")]
        given = np.shape(feeds[past_names[0]])[2]
        filled_mask = np.asarray(feeds["attention_mask"])[:, :given]
        check_call(ids, int(filled_mask.sum()), capacity, "LiteRT")
        sources = [feeds[name] for name in past_names]
        if self._kv is not None and self._kv[3] == int(filled_mask.sum()) and all(
                a is b for a, b in zip(sources, self._kv[0])):
            # the same buffers as the last call, grown only by the entries it returned (the runtime's KVCache): the
            # C-slot copies already hold them, so a decode step copies nothing
            past, mask = self._kv[1], self._kv[2]
        else:
            past = {}
            for name in past_names:
                value = np.asarray(feeds[name])[:, :, : min(given, capacity)]
                buffer = np.zeros((*value.shape[:2], capacity, value.shape[3]), np.float32)
                buffer[:, :, : value.shape[2]] = value
                past[name] = buffer
            mask = np.zeros((1, capacity), np.int64)
            mask[:, : min(given, capacity)] = filled_mask[:, :capacity]
        # the runtime fills its buffer from slot 0 (its mask is 1..1 0..0): new entries go to the next free slots
        filled = int(mask.sum())
        logits, presents = None, {n.replace("past_", "present_"): [] for n in past_names}
        for chunk in chunks(feeds, prefill_length, image_token):
            runner, size, pad = self.runners[chunk.entry], chunk.pad + chunk.real, chunk.pad
            step = {**chunk.feeds, **past, "attention_mask": np.concatenate(
                [mask, np.zeros((1, pad), np.int64), np.ones((1, size - pad), np.int64)], 1)}
            out = runner(step)
            logits = out["logits"]
            real = size - pad
            for name in past_names:
                entries = out[name.replace("past_", "present_")][:, :, pad:]
                past[name][:, :, filled : filled + real] = entries
                presents[name.replace("past_", "present_")].append(entries)
            mask[:, filled : filled + real] = 1
            filled += real
        # keep the caller's arrays alive with the copies: identity then cannot match a new, reused-id buffer
        self._kv = (sources, past, mask, filled)
        return {"logits": logits, **{k: np.concatenate(v, axis=2) for k, v in presents.items()}}
