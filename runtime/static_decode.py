"""Running the runtime's decoder calls on static-shape decoders (LiteRT signatures, Core ML functions).

The runtime's generation loop sends a whole prompt, then one token per step, with dynamic shapes. A static decoder
has a ``prefill_N`` entry point (N new tokens) and a ``decode`` one (1 token) over a fixed KV capacity. ``chunks``
splits one call into such steps: each chunk is padded on the left with masked tokens (so the last position, whose
logits are returned, is real), its positions are padded with the first real one, and the image rows it needs are
sliced from ``image_embeds`` (and ``deepstack_embeds``) by counting image tokens. ``run_rows`` does the same for
static encoders exported at batch 1: one call per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pocketvlm.runtime.errors import InputError

PREFILL_PREFIX = "prefill_"
DECODE = "decode"


@dataclass(frozen=True)
class Chunk:
    entry: str  # the signature / function that runs it: "prefill_N" or "decode"
    pad: int  # masked tokens on the left
    real: int  # real tokens (size = pad + real)
    feeds: dict[str, np.ndarray]  # input_ids, position_ids, image_embeds (, deepstack_embeds), padded


def check_call(ids: np.ndarray, filled: int, capacity: int, engine: str) -> None:
    if ids.shape[0] != 1:
        raise InputError(f"{engine} decoders run one sequence at a time, got a batch of {ids.shape[0]}",
                         "generate one prompt per call")
    if filled + ids.shape[1] > capacity:
        raise InputError(f"{filled} cached + {ids.shape[1]} new tokens exceed this {engine} bundle's KV capacity of "
                         f"{capacity}", "shorten the prompt or re-export with a larger kv_capacity")


def chunks(feeds: dict[str, np.ndarray], prefill_length: int, image_token: int, padded: bool = True) -> Iterator[Chunk]:
    """One call as chunks of at most ``prefill_length`` tokens; ``padded``: each padded to ``prefill_length``
    (static decoders), else each as long as its tokens (a decoder with a dynamic sequence: ExecuTorch)."""
    ids = np.asarray(feeds["input_ids"])
    rows = np.asarray(feeds["image_embeds"])
    deep = feeds.get("deepstack_embeds")
    positions = np.asarray(feeds["position_ids"])
    used = 0
    for start in range(0, ids.shape[1], prefill_length):
        part = ids[:, start : start + prefill_length]
        single = part.shape[1] == 1
        size = 1 if single else prefill_length if padded else part.shape[1]
        pad = size - part.shape[1]
        step = {"input_ids": np.concatenate([np.full((1, pad), 0 if image_token else 1, ids.dtype), part], 1),
                "position_ids": pad_positions(positions[..., start : start + size - pad], pad),
                "image_embeds": image_slice(rows, used, size, axis=0)}
        if deep is not None:
            step["deepstack_embeds"] = image_slice(np.asarray(deep), used, size, axis=1)
        used += int((part == image_token).sum())
        yield Chunk(DECODE if single else f"{PREFILL_PREFIX}{prefill_length}", pad, size - pad, step)


def pad_positions(positions: np.ndarray, pad: int) -> np.ndarray:
    if not pad:
        return positions
    first = positions[..., :1]
    return np.concatenate([np.broadcast_to(first, (*positions.shape[:-1], pad)), positions], axis=-1)


def image_slice(rows: np.ndarray, start: int, size: int, axis: int) -> np.ndarray:
    """``size`` rows along ``axis`` from ``start`` (the chunk's image rows, in order), padded by repeating the last
    row; the graph only reads rows at image-token positions."""
    taken = np.take(rows, np.arange(start, start + size).clip(max=rows.shape[axis] - 1), axis=axis)
    return np.ascontiguousarray(taken, dtype=np.float32)


Feeds = dict[str, np.ndarray]


def run_rows(call: Callable[[Feeds], Feeds], feeds: Feeds, loop: Sequence[str], shapes: dict[str, tuple[int, ...]],
             output_names: Sequence[str]) -> Feeds:
    """A static-shape component exported at batch 1 over a batch: ``call`` once per row of the ``loop`` inputs
    (the rest passed whole), outputs concatenated. Feeds that already have the static shapes go through once."""
    if not loop or all(np.shape(feeds[k]) == tuple(shapes[k]) for k in shapes):
        return call(feeds)
    rows = {np.shape(feeds[k])[0] for k in loop}
    if len(rows) != 1:
        raise InputError(f"inputs {list(loop)} disagree on their first dimension: {sorted(rows)}",
                         "pass the same number of rows for each")
    parts = [call({k: (v[i : i + 1] if k in loop else v) for k, v in feeds.items()}) for i in range(rows.pop())]
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in output_names}


class StaticKVCache:
    """The KV cache a static-shape decoder session owns (LiteRT signatures, QNN contexts): one ``capacity``-slot
    buffer per layer and kind, allocated once and filled in place with the entries each call returns, and the mask
    of filled slots. ``run`` takes one call of the runtime's loop (a prompt, or one token) through the ``prefill_N``
    and ``decode`` entry points; the caller's ``attention_mask`` says how many tokens it believes are cached, which
    must match (its ``past_*`` feeds, if any, are ignored)."""

    def __init__(self, past: dict[str, tuple[tuple[int, ...], np.dtype]], capacity: int, engine: str,
                 mask_dtype: np.dtype | type = np.int64) -> None:
        self.past = {name: np.zeros(shape, dtype) for name, (shape, dtype) in past.items() if name.startswith("past_")}
        self.mask = np.zeros((1, capacity), mask_dtype)
        self.capacity, self.engine, self.filled = capacity, engine, 0

    def reset(self) -> None:
        """A new sequence: the used slots are cleared, so a generation never sees the last one's values even where
        they are masked."""
        for buffer in self.past.values():
            buffer[:, :, : self.filled] = 0
        self.mask[:] = 0
        self.filled = 0

    def run(self, feeds: dict[str, np.ndarray], entries: dict[str, Callable[[Feeds], Feeds]],
            image_token: int) -> dict[str, np.ndarray]:
        prefill = next(name for name in entries if name.startswith(PREFILL_PREFIX))
        ids = np.asarray(feeds["input_ids"])
        claimed = int(np.asarray(feeds["attention_mask"])[0, : -ids.shape[1]].sum())
        if claimed != self.filled:
            raise InputError(f"the caller's KV cache holds {claimed} tokens but this {self.engine} decoder's cache "
                             f"holds {self.filled}", "call reset() before each new sequence, and run one at a time")
        check_call(ids, self.filled, self.capacity, self.engine)
        logits = None
        for chunk in chunks(feeds, int(prefill[len(PREFILL_PREFIX):]), image_token):
            size = chunk.pad + chunk.real
            mask = np.concatenate([self.mask, np.zeros((1, chunk.pad), self.mask.dtype),
                                   np.ones((1, chunk.real), self.mask.dtype)], 1)
            out = entries[chunk.entry]({**chunk.feeds, **self.past, "attention_mask": mask})
            logits = out["logits"]
            end = self.filled + chunk.real
            for name, buffer in self.past.items():  # the new entries go to the next free slots
                buffer[:, :, self.filled : end] = out[name.replace("past_", "present_")][:, :, chunk.pad : size]
            self.mask[:, self.filled : end] = 1
            self.filled = end
        return {"logits": logits}
