"""Collect GPTQ Hessians through an fp32 ONNX graph: the input of every weight MatMul is exposed as an extra graph
output, so no PyTorch model is needed."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.targets.onnx.nbits import weight_nodes
from pocketvlm.runtime.errors import QuantizationError


def graph_hessians(path: Path, feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{node name: X^T X}`` of every weight MatMul of the fp32 graph at ``path``."""
    import onnx

    model = onnx.load(str(path))
    return collect_hessians(model, weight_nodes(model), feeds)


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
        raise QuantizationError("no calibration feeds were given", "record feeds through an fp32 bundle first")
    return {node.name: sums[node.input[0]] for node in nodes}
