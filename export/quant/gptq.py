"""GPTQ for block-wise weight-only quantization: calibrated error compensation for ``MatMulNBits``.

Round-to-nearest quantizes every weight on its own. GPTQ (Frantar et al., 2022) quantizes the input dimensions of a
layer one at a time and pushes each one's rounding error onto the not-yet-quantized ones, weighted by the inverse
Hessian ``H = X^T X`` of the layer's inputs on calibration data, so that the layer's *output* on that data moves as
little as possible. The result uses exactly the same format and kernels as round-to-nearest (same blocks, scales
and zero points), so it costs nothing at run time.

The Hessians come from each target's own calibration pass (``targets/onnx/calibrate.py`` runs the fp32 ONNX graph
with the MatMul inputs exposed as outputs; ``targets/coreml/gptq.py`` hooks the export wrapper's Linear layers).
Each layer is calibrated on the fp32 model's activations (not sequentially on the already-quantized layers before
it), which keeps collection to one pass.
"""

from __future__ import annotations

import numpy as np

from pocketvlm.export.quant.blockwise import pack_levels, quantize_blocks, quantize_blocks_asymmetric

DAMPING = 0.01  # fraction of the mean Hessian diagonal added to the diagonal (the paper's default)


def _grid(block: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point ([N] each) of one [block_size, N] block, MSE-searched like round-to-nearest."""
    if symmetric:
        _, scales = quantize_blocks(block, block.shape[0], bits)
        return scales[:, 0], np.full(scales.shape[0], 2.0 ** (bits - 1), np.float32)
    _, scales, zero = quantize_blocks_asymmetric(block, block.shape[0], bits)
    return scales[:, 0], zero[:, 0].astype(np.float32)


def gptq_quantize(weight: np.ndarray, hessian: np.ndarray, block_size: int, bits: int = 4,
                  symmetric: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """[K, N] weight and its [K, K] input Hessian -> (packed uint8 [N, blocks, block_size * bits // 8], scales
    float32 [N, blocks], zero points uint8 [N, blocks] or None when symmetric): the layout ``quantize_blocks`` /
    ``quantize_blocks_asymmetric`` produce, so ``dequantize_blocks`` and ``MatMulNBits`` read it unchanged."""
    top = 2 ** bits - 1
    k, n = weight.shape
    blocks = -(-k // block_size)
    size = blocks * block_size
    w = np.zeros((n, size), np.float64)
    w[:, :k] = weight.T
    h = np.eye(size, dtype=np.float64)  # padding columns are zero weights with no input: identity keeps h invertible
    h[:k, :k] = hessian
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices(size)] += DAMPING * np.mean(np.diag(h))
    # upper Cholesky factor of H^-1: row i holds how column i's error spreads to the later columns
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros((n, size), np.uint8)
    scales = np.zeros((n, blocks), np.float32)
    zeros = np.zeros((n, blocks), np.float32)
    for b in range(blocks):
        lo, hi = b * block_size, (b + 1) * block_size
        part = w[:, lo:hi].copy()
        scale, zero = _grid(part.T.astype(np.float32), bits, symmetric)
        scales[:, b], zeros[:, b] = scale, zero
        s, z = scale.astype(np.float64), zero.astype(np.float64)
        errors = np.zeros_like(part)
        inv = upper[lo:hi, lo:hi]
        for i in range(block_size):
            column = part[:, i]
            level = np.clip(np.rint(column / s) + z, 0, top)
            q[:, lo + i] = level
            err = (column - (level - z) * s) / inv[i, i]
            part[:, i:] -= np.outer(err, inv[i, i:])
            errors[:, i] = err
        w[:, hi:] -= errors @ upper[lo:hi, hi:]
    return pack_levels(q.reshape(n, blocks, block_size), bits), scales, None if symmetric else zeros.astype(np.uint8)
