"""Token selection and the fixed-size KV cache used by the generation loop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketvlm.runtime.errors import InputError


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}",
                             "pass --max-new-tokens 1 or more")
        if self.temperature <= 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}", "use do_sample=False for greedy")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}", "pass a value like 0.9")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}", "pass 0 to disable top-k")


class Sampler:
    """Greedy, or temperature / top-k / top-p sampling from a seeded generator (same seed, same tokens)."""

    def __init__(self, config: GenerationConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if not self.config.do_sample:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64) / self.config.temperature
        if self.config.top_k:
            kth = np.sort(scores)[-min(self.config.top_k, scores.size)]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if self.config.top_p < 1.0:
            order = np.argsort(-probs)
            keep = np.cumsum(probs[order]) - probs[order] < self.config.top_p
            mask = np.zeros_like(probs, dtype=bool)
            mask[order[keep]] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))


class KVCache:
    """One preallocated [1, kv_heads, capacity, head_dim] buffer per layer and kind, filled in place.

    The decoder graph reads the whole buffer (``past_*``) with ``attention_mask`` marking the filled slots, and
    returns only the new entries, which are copied into the next free slots: no allocation per token. A decoder
    session that keeps its cache itself (``Session.owns_kv_cache``: LiteRT, Core ML) gets ``track_only``: the mask and
    the count, no buffers.
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int, track_only: bool = False) -> None:
        self.capacity = capacity
        self.filled = 0
        self.track_only = track_only
        self.buffers = {} if track_only else {
            f"past_{kind}_{layer}": np.zeros((1, kv_heads, capacity, head_dim), np.float32)
            for layer in range(layers) for kind in ("key", "value")}
        self._mask = np.zeros((1, capacity + capacity), np.int64)

    def attention_mask(self, new_tokens: int) -> np.ndarray:
        mask = self._mask[:, : self.capacity + new_tokens]
        mask[:] = 0
        mask[:, : self.filled] = 1
        mask[:, self.capacity : self.capacity + new_tokens] = 1
        return mask

    def append(self, outputs: dict[str, np.ndarray], new_tokens: int) -> None:
        if self.filled + new_tokens > self.capacity:
            raise InputError(f"KV cache full ({self.capacity} tokens)", "lower max_new_tokens or shorten the prompt")
        for name, buffer in self.buffers.items():  # none when track_only
            buffer[:, :, self.filled : self.filled + new_tokens] = outputs[name.replace("past_", "present_")]
        self.filled += new_tokens
