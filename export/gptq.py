"""GPTQ for block-wise weight-only quantization: calibrated error compensation for ``MatMulNBits``.

Round-to-nearest quantizes every weight on its own. GPTQ (Frantar et al., 2022) quantizes the input dimensions of a
layer one at a time and pushes each one's rounding error onto the not-yet-quantized ones, weighted by the inverse
Hessian ``H = X^T X`` of the layer's inputs on calibration data, so that the layer's *output* on that data moves as
little as possible. The result uses exactly the same format and kernels as round-to-nearest (same blocks, scales
and zero points), so it costs nothing at run time.

Here the Hessians come from running the fp32 ONNX component itself on calibration feeds (the inputs every MatMul
sees are exposed as extra graph outputs), so no PyTorch model is needed. Each layer is calibrated on the fp32
model's activations (not sequentially on the already-quantized layers before it), which keeps collection to one
pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from pocketvlm.export.int4 import pack_levels, quantize_blocks, quantize_blocks_asymmetric

DAMPING = 0.01  # fraction of the mean Hessian diagonal added to the diagonal (the paper's default)


def collect_hessians(model: Any, nodes: list[Any], feeds: Iterable[dict[str, np.ndarray]],
                     threads: int = 0) -> dict[str, np.ndarray]:
    """``{node name: X^T X}`` (float64, [K, K]) of each node's first input over every row of every feed, from one
    ORT session of ``model`` (an fp32 ``ModelProto``, left unchanged) with those inputs added as outputs."""
    import onnx
    import onnxruntime as ort

    if not nodes:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted = {node.input[0] for node in nodes}
    existing = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in sorted(wanted - existing))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    sums: dict[str, np.ndarray] = {}
    pending: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    rows = 0

    def flush() -> None:  # one K x K product per node per ~1k rows: adding K x K sums per decode step is the cost
        for name, parts in pending.items():
            if parts:
                x = np.concatenate(parts).astype(np.float64)
                sums[name] = sums.get(name, 0.0) + x.T @ x
                parts.clear()

    for feed in feeds:
        given = {k: v for k, v in feed.items() if k in inputs}
        values = {**given, **dict(zip(names, session.run(None, given), strict=True))}
        for name in wanted:
            pending[name].append(values[name].reshape(-1, values[name].shape[-1]))
        rows += pending[next(iter(wanted))][-1].shape[0]
        if rows >= 1024:
            flush()
            rows = 0
    flush()
    if not sums:
        raise ValueError("no calibration feeds were given")
    return {node.name: sums[node.input[0]] for node in nodes}


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


class FeedRecorder:
    """Stands in for a runtime ``Session`` and keeps a copy of every feed it runs: run an fp32 bundle through the
    runtime on representative inputs with its session wrapped, and the feeds are the calibration data for GPTQ."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append({name: np.array(value, copy=True) for name, value in feeds.items()})
        return self.session.run(feeds)
