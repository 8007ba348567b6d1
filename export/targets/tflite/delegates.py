"""Delegate coverage of a ``.tflite`` component: for every signature, which nodes the GPU delegate and the NNAPI
(NPU) delegate would take and which fall back to CPU, and why, before anyone goes to a phone.

The verdicts replay the delegates' own static checks (``delegate_tables``) on the ops, op versions, tensor types
and ranks read from the flatbuffer. They are an upper bound: a GPU or an NNAPI driver can still refuse a node on a
given device, and only that device can say.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketvlm.export.targets.tflite.delegate_tables import (
    GPU_ACTIVATION_TYPES,
    GPU_EXTRA_TYPES,
    GPU_MAX_VERSION,
    GPU_OPS,
    NNAPI_OPS,
    NNAPI_RANK_LIMITED,
    NNAPI_TENSOR_TYPES,
)


@dataclass(frozen=True)
class Tensor:
    dtype: str
    rank: int
    constant: bool
    blockwise: bool
    dynamic: bool


@dataclass(frozen=True)
class Node:
    op: str
    version: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        return self.inputs + self.outputs


@dataclass
class Coverage:
    nodes: int = 0
    delegated: int = 0
    fallback: Counter = field(default_factory=Counter)  # (op, reason) -> nodes
    whole_graph: list[str] = field(default_factory=list)  # reasons nothing at all is delegated

    def to_json(self) -> dict[str, Any]:
        delegated = 0 if self.whole_graph else self.delegated
        return {"nodes": self.nodes, "delegated": delegated,
                "share": round(delegated / self.nodes, 4) if self.nodes else 0.0,
                "fallback": [{"op": op, "nodes": count, "reason": reason}
                             for (op, reason), count in self.fallback.most_common()],
                "whole_graph_fallback": self.whole_graph}


def read_signatures(path: Path) -> dict[str, list[Node]]:
    """Signature name -> its subgraph's nodes, from the flatbuffer (no interpreter)."""
    from ai_edge_litert import schema_py_generated as schema

    buffer = path.read_bytes()
    model = schema.Model.GetRootAs(buffer, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def tensor(graph: Any, index: int) -> Tensor:
        t = graph.Tensors(index)
        data = model.Buffers(t.Buffer()) if t.Buffer() else None
        constant = bool(data is not None and (data.DataLength() or data.Offset()))
        quant = t.Quantization()
        blockwise = bool(quant is not None and quant.DetailsType() == schema.QuantizationDetails.BlockwiseQuantization)
        signature = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else []
        return Tensor(type_names.get(t.Type(), str(t.Type())), t.ShapeLength(), constant, blockwise,
                      bool(len(signature) and (signature < 0).any()))

    result = {}
    for s in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(s)
        graph = model.Subgraphs(sig.SubgraphIndex())
        nodes = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = op_names.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = f"CUSTOM:{code.CustomCode().decode()}"
            ins = tuple(tensor(graph, int(j)) for j in op.InputsAsNumpy() if j >= 0) if op.InputsLength() else ()
            outs = tuple(tensor(graph, int(j)) for j in op.OutputsAsNumpy()) if op.OutputsLength() else ()
            nodes.append(Node(name, code.Version(), ins, outs))
        result[sig.SignatureKey().decode()] = nodes
    return result


def gpu_reason(node: Node) -> str | None:
    """Why the classic GPU delegate leaves this node on CPU (``None``: it takes it)."""
    if node.op not in GPU_OPS:
        return "no GPU kernel for this op"
    if node.version > GPU_MAX_VERSION.get(node.op, node.version):
        return f"op version {node.version} above the GPU delegate's {GPU_MAX_VERSION[node.op]}"
    if any(t.rank > 4 for t in node.tensors):
        return "a tensor of rank > 4"
    if any(t.blockwise or t.dtype in ("INT4", "UINT4") for t in node.inputs):
        return "block-wise int4 weights (classic GPU delegate dequantizes int8/uint8/fp16 weights only)"
    for t in node.tensors:
        if t.constant or t.dtype in GPU_ACTIVATION_TYPES or node.op in GPU_EXTRA_TYPES.get(t.dtype, ()):
            continue
        return f"{t.dtype.lower()} activation tensor"
    return None


def nnapi_reason(node: Node) -> str | None:
    """Why the NNAPI delegate's Validate rejects this node (``None``: it accepts it)."""
    if node.op not in NNAPI_OPS:
        return "not handled by the NNAPI delegate"
    _, max_version = NNAPI_OPS[node.op]
    if max_version is not None and node.version > max_version:
        return f"op version {node.version} above NNAPI's {max_version}"
    if node.op in NNAPI_RANK_LIMITED and any(t.rank > 4 for t in node.tensors):
        return "a tensor of rank > 4"
    return None


def coverage(nodes: list[Node]) -> dict[str, Any]:
    gpu, nnapi = Coverage(nodes=len(nodes)), Coverage(nodes=len(nodes))
    accepted = []  # by NNAPI's per-op checks, before its whole-graph ones
    for node in nodes:
        rejected = nnapi_reason(node)
        if rejected is None:
            accepted.append(node)
        for cover, why in ((gpu, gpu_reason(node)), (nnapi, rejected)):
            if why is None:
                cover.delegated += 1
            else:
                cover.fallback[(node.op, why)] += 1
    bad_types = sorted({t.dtype.lower() for n in accepted for t in n.tensors if t.dtype not in NNAPI_TENSOR_TYPES})
    if bad_types:
        nnapi.whole_graph.append(f"accepted ops touch {', '.join(bad_types)} tensors, which NNAPI cannot hold: the "
                                 "delegate fails to build and the whole graph runs on CPU")
    if any(t.dynamic for n in nodes for t in n.tensors):
        nnapi.whole_graph.append("dynamic tensor shapes (the NNAPI delegate needs static shapes)")
    min_level = max((NNAPI_OPS[n.op][0] for n in accepted), default=27)
    return {"gpu": gpu.to_json(), "nnapi": {**nnapi.to_json(), "min_nnapi_level": min_level}}


def component_coverage(path: Path) -> dict[str, Any]:
    """Signature name -> GPU and NNAPI coverage for one ``.tflite`` file."""
    return {name: coverage(nodes) for name, nodes in read_signatures(path).items()}


def delegate_section(bundle: Any) -> dict[str, Any]:
    """The parity report's ``delegates`` block for a LiteRT bundle (nothing for other targets)."""
    covered = {name: component_coverage(bundle.file(spec.file)) for name, spec in bundle.components.items()
               if spec.format == "tflite"}
    return {"delegates": covered} if covered else {}


def suggestion(delegate: str, fallback: list[dict[str, Any]]) -> str:
    reasons = " ".join(row["reason"] for row in fallback)
    if "int4" in reasons:
        return "int4 weights keep FULLY_CONNECTED off the classic GPU delegate; use int8 or fp16 for GPU targets"
    if "int64" in reasons or "int32" in reasons:
        return "integer index math (masks, positions) stays on CPU; precompute it in the runtime where possible"
    return f"ops without a {delegate} kernel run on CPU between delegated partitions"


def format_coverage(report: dict[str, Any]) -> str:
    """One line per component, signature and delegate: '87% of nodes on GPU; falls back: OP (n, reason), ...'."""
    lines = []
    for component, signatures in report.items():
        for name, row in signatures.items():
            for delegate in ("gpu", "nnapi"):
                cover = row[delegate]
                head = f"{component}/{name} {delegate.upper()}: {cover['share'] * 100:.0f}% of {cover['nodes']} nodes"
                ops = ", ".join(f"{f['op']} x{f['nodes']} ({f['reason']})" for f in cover["fallback"][:6])
                more = f", +{len(cover['fallback']) - 6} more" if len(cover["fallback"]) > 6 else ""
                whole = f"; whole graph on CPU: {cover['whole_graph_fallback'][0]}" if cover[
                    "whole_graph_fallback"] else ""
                lines.append(f"{head}; falls back: {ops or 'nothing'}{more}{whole}")
    return "\n".join(lines)
