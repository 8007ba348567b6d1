"""Block-wise weight quantization math shared by every target (4 or 8 bits), with error-minimising scales.

Round-to-nearest with an abs-max scale (the ORT default) wastes part of the 16 levels on one outlier per block.
Here each block of ``block_size`` weights along K picks, among a small grid of candidate scales (both signs, so the
largest magnitude can land on the -8 level), the one with the least squared reconstruction error. Same format, same
kernels, same size; measured lower error (see tests/test_quantization.py).
Symmetric: q in [0, 2^bits), zero point 2^(bits-1). Asymmetric (``symmetric=False``): each block also gets its own
integer zero point (uint8, packed like the weights at 4 bits), so a block whose weights are not centred on zero (the
common case for the narrow blocks of small models, and the layout of GGUF Q4_1 / Q4_K sources) spends all 16 levels
on its own range; ORT's integer kernels take it at the same speed (measured here: a 576x1536 decode-row MatMulNBits
at accuracy_level 4 takes 25 us with uint8 zero points, 26 us without). Float zero points would reproduce Q4_1
exactly but send ORT down a dequantizing path 60x slower, so they are not used. The ONNX graph rewriting that uses
this is ``targets/onnx/nbits.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEARCH = np.linspace(0.6, 1.1, 21)  # scale = amax / (levels * factor), tried with both signs


def blocked(weight: np.ndarray, block_size: int) -> np.ndarray:
    """[K, N] weight -> [N, blocks, block_size] float32, K zero-padded to whole blocks (blocks run along K)."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.float32)
    padded[:k] = weight
    return padded.T.reshape(n, blocks, block_size)


def pack_levels(q: np.ndarray, bits: int) -> np.ndarray:
    """[..., block_size] uint8 levels -> MatMulNBits' B layout (4 bits: two levels per byte, low nibble first)."""
    return q if bits == 8 else q[..., 0::2] | (q[..., 1::2] << 4)


CHUNK_ELEMENTS = 1 << 22  # weights are quantized this many values at a time (the scale search holds ~8 temporaries)


def by_columns(quantize: Any, weight: np.ndarray, *args: Any) -> tuple[np.ndarray, ...]:
    """Apply a [K, N] -> ([N, ...], ...) quantizer to slices of output columns and stack the results: columns are
    independent (blocks run along K), so this is exact, and the search's temporaries stay bounded (a 151936 x 1536
    embedding table in one piece held ~8 GB of them)."""
    k, n = weight.shape
    step = max(1, CHUNK_ELEMENTS // max(k, 1))
    if n <= step:
        return quantize(weight, *args)
    parts = [quantize(weight[:, lo:lo + step], *args) for lo in range(0, n, step)]
    return tuple(np.concatenate(outputs, axis=0) for outputs in zip(*parts, strict=True))


def quantize_blocks(weight: np.ndarray, block_size: int, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float weight -> (packed uint8 [N, blocks, block_size * bits // 8], scales float32 [N, blocks])."""
    return by_columns(_quantize_blocks, weight, block_size, bits)  # type: ignore[return-value]


def _quantize_blocks(weight: np.ndarray, block_size: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    w = blocked(weight, block_size)
    amax = np.abs(w).max(axis=-1, keepdims=True)
    amax = np.where(amax == 0, 1.0, amax)
    best_err = np.full(amax.shape, np.inf, dtype=np.float32)
    best_scale = amax / -low
    for factor in SEARCH:
        for sign in (1.0, -1.0):
            scale = sign * amax / (-low * factor)
            q = np.clip(np.rint(w / scale), low, high)
            err = ((w - q * scale) ** 2).sum(axis=-1, keepdims=True)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_scale = np.where(better, scale, best_scale)
    q = (np.clip(np.rint(w / best_scale), low, high) - low).astype(np.uint8)
    return pack_levels(q, bits), best_scale[..., 0].astype(np.float32)


ASYM_SEARCH = np.linspace(0.7, 1.0, 16)  # the block's [min, max] range shrunk by this factor


def quantize_blocks_asymmetric(weight: np.ndarray, block_size: int,
                               bits: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[K, N] float weight -> (packed uint8 [N, blocks, block_size * bits // 8], scales float32 [N, blocks],
    zero points uint8 [N, blocks]) with w ~ (q - zero) * scale; the range is MSE-searched like the symmetric one."""
    return by_columns(_quantize_blocks_asymmetric, weight, block_size, bits)  # type: ignore[return-value]


def _quantize_blocks_asymmetric(weight: np.ndarray, block_size: int,
                                bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    top = 2 ** bits - 1
    w = blocked(weight, block_size)
    low = np.minimum(w.min(axis=-1, keepdims=True), 0.0)
    high = np.maximum(w.max(axis=-1, keepdims=True), 0.0)
    span = np.where(high - low == 0, 1.0, high - low)
    best_err = np.full(span.shape, np.inf, dtype=np.float32)
    best_scale, best_zero = span / top, np.zeros(span.shape, np.float32)
    for factor in ASYM_SEARCH:
        scale = span * factor / top
        zero = np.clip(np.rint(-low * factor / scale), 0, top)
        q = np.clip(np.rint(w / scale) + zero, 0, top)
        err = ((w - (q - zero) * scale) ** 2).sum(axis=-1, keepdims=True)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_zero = np.where(better, zero, best_zero)
    q = np.clip(np.rint(w / best_scale) + best_zero, 0, top).astype(np.uint8)
    return pack_levels(q, bits), best_scale[..., 0].astype(np.float32), best_zero[..., 0].astype(np.uint8)


def pack_zero_points(zero: np.ndarray, bits: int) -> np.ndarray:
    """[N, blocks] uint8 -> MatMulNBits' zero_points input (4 bits: two per byte, each row padded to whole bytes)."""
    if bits == 8:
        return zero.reshape(-1)
    if zero.shape[1] % 2:
        zero = np.concatenate([zero, np.zeros((zero.shape[0], 1), np.uint8)], axis=1)
    return (zero[:, 0::2] | (zero[:, 1::2] << 4)).reshape(-1)


def dequantize_blocks(packed: np.ndarray, scales: np.ndarray, k: int, bits: int = 4,
                      zero: np.ndarray | None = None) -> np.ndarray:
    """Inverse of ``quantize_blocks`` / ``quantize_blocks_asymmetric`` (``zero`` [N, blocks], unpacked) for tests and
    the numeric checks of other targets: -> [K, N] float32."""
    q = packed if bits == 8 else np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:2], -1)
    offset = zero[..., None].astype(np.float32) if zero is not None else 2.0 ** (bits - 1)
    w = (q.astype(np.float32) - offset) * scales[..., None]
    return w.reshape(w.shape[0], -1)[:, :k].T.copy()
