"""ONNX graph rewriting for weight-only quantization: MatMul / linear Gemm -> ``com.microsoft::MatMulNBits`` and a
tied embedding / LM-head table -> one block-quantized initializer shared by ``GatherBlockQuantized`` and
``MatMulNBits``. The block math (scales, packing, GPTQ) is ``quant/blockwise.py`` and ``quant/gptq.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.quant.blockwise import pack_zero_points, quantize_blocks, quantize_blocks_asymmetric
from pocketvlm.export.quant.gptq import gptq_quantize
from pocketvlm.runtime.errors import ExportError


def matmuls_to_nbits(model: Any, block_size: int = 32, bits: int = 4, first_bits: int | None = None,
                     last_bits: int | None = None, accuracy_level: int = 0, symmetric: bool = True,
                     hessians: dict[str, np.ndarray] | None = None, base_dir: Path | None = None) -> int:
    """Rewrite every MatMul (and linear Gemm) with a 2-D float32 initializer weight (K >= block_size) in place.
    Returns the count.

    ``first_bits`` / ``last_bits`` give the first and last such layer in graph order their own width (the usual
    mixed-precision rule: the first layer sees the raw input and its error is amplified by every later layer; the
    last one writes the output directly). ``hessians`` (``{node name: X^T X}`` from ``gptq.collect_hessians``)
    switches the nodes it names from round-to-nearest to GPTQ; the output format is the same. Weights kept as external
    data (graph loaded with ``load_external_data=False``) are read from ``base_dir`` one at a time.
    """
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    def weight_of(node: Any) -> tuple[np.ndarray | None, str | None, Any]:
        init = _float_weight(node, initializers)
        if init is None:
            return None, None, None
        bias = _weight_operand(node)[1]
        dims = list(init.dims)[::-1] if node.op_type == "Gemm" and _attr(node, "transB", 0) else list(init.dims)
        return (None, None, None) if dims[0] < block_size else (init, bias, dims)

    graph_nodes = list(model.graph.node)  # positions identify nodes (protobuf wrappers have no stable id())
    eligible = [i for i, node in enumerate(graph_nodes) if weight_of(node)[0] is not None]
    widths = {key: bits for key in eligible}
    if eligible and first_bits:
        widths[eligible[0]] = first_bits
    if len(eligible) > 1 and last_bits:
        widths[eligible[-1]] = last_bits
    rewritten, nodes = 0, []
    for position, node in enumerate(graph_nodes):
        if position not in widths:
            nodes.append(node)
            continue
        init, bias, _ = weight_of(node)
        weight = tensor_array(init, base_dir)
        if node.op_type == "Gemm" and _attr(node, "transB", 0):
            weight = weight.T  # Gemm(transB=1) keeps nn.Linear's [out, in]
        k, n = weight.shape
        width = widths[position]
        base = f"{node.name or init.name}_q{width}"
        zero: np.ndarray | None = None
        if hessians is not None and node.name in hessians:
            packed, scales, zero = gptq_quantize(weight, hessians[node.name], block_size, width, symmetric)
        elif symmetric:
            packed, scales = quantize_blocks(weight, block_size, width)
        else:
            packed, scales, zero = quantize_blocks_asymmetric(weight, block_size, width)
        zero_input = "" if zero is None else f"{base}_zero"
        if zero is not None:
            model.graph.initializer.append(numpy_helper.from_array(pack_zero_points(zero, width), zero_input))
        model.graph.initializer.extend([numpy_helper.from_array(packed, f"{base}_B"),
                                        numpy_helper.from_array(scales.reshape(-1), f"{base}_scales")])
        inputs = [node.input[0], f"{base}_B", f"{base}_scales"]
        if zero_input or bias:
            inputs += [zero_input, "", bias] if bias else [zero_input]
        nodes.append(helper.make_node("MatMulNBits", inputs, list(node.output),
                                      name=base, domain="com.microsoft", K=k, N=n, bits=width, block_size=block_size,
                                      accuracy_level=accuracy_level))
        users[init.name] -= 1
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    unused = [init for init in model.graph.initializer if users.get(init.name, 1) == 0]
    for init in unused:
        model.graph.initializer.remove(init)
    if rewritten and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return rewritten


def tensor_array(init: Any, base_dir: Path | None = None) -> np.ndarray:
    """An initializer's value; one kept as external data is read from its file under ``base_dir`` with a plain read
    (no memory map, so the rest of the file never counts against this process's resident memory)."""
    from onnx import external_data_helper, helper, numpy_helper

    if not external_data_helper.uses_external_data(init):
        return numpy_helper.to_array(init)
    if base_dir is None:
        raise ExportError(f"initializer {init.name} is external data but no base directory was given",
                          "load the graph from its file so its external data can be found")
    info = external_data_helper.ExternalDataInfo(init)
    dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
    count = int(np.prod(init.dims, dtype=np.int64))
    with open(Path(base_dir) / info.location, "rb") as handle:
        handle.seek(info.offset or 0)
        data = np.fromfile(handle, dtype=dtype, count=count)
    if data.size != count:
        raise ExportError(f"external data of {init.name} is truncated ({data.size} of {count} values)",
                          "the fp32 graph's .data file is incomplete: free disk space and export again")
    return data.reshape(tuple(init.dims))


def weight_nodes(model: Any) -> list[Any]:
    """The MatMul / linear Gemm nodes whose weight is a 2-D float32 initializer: what ``matmuls_to_nbits`` may
    rewrite (and what GPTQ collects Hessians for)."""
    initializers = {init.name: init for init in model.graph.initializer}
    return [node for node in model.graph.node if _float_weight(node, initializers) is not None]


def _float_weight(node: Any, initializers: dict[str, Any]) -> Any:
    """The node's weight initializer when it is a MatMul / linear Gemm with a 2-D float32 one, else None."""
    import onnx

    weight_name, _ = _weight_operand(node)
    init = initializers.get(weight_name) if weight_name else None
    if init is None or len(init.dims) != 2 or init.data_type != onnx.TensorProto.FLOAT:
        return None
    return init


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _weight_operand(node: Any) -> tuple[str | None, str | None]:
    """(weight, bias) of a MatMul, or of a Gemm that is a plain linear layer (2-D nn.Linear exports as Gemm)."""
    if node.op_type == "MatMul" and len(node.input) == 2:
        return node.input[1], None
    if node.op_type == "Gemm" and not _attr(node, "transA", 0) and _attr(node, "alpha", 1.0) == 1.0 \
            and _attr(node, "beta", 1.0) == 1.0:
        return node.input[1], node.input[2] if len(node.input) > 2 and node.input[2] else None
    return None, None


def quantize_tied_table(model: Any, block_size: int = 32, bits: int = 8, accuracy_level: int = 0,
                        base_dir: Path | None = None) -> bool:
    """A table used by both a Gather (token embedding) and, transposed, a MatMul (tied LM head) becomes one
    block-quantized initializer read by ``GatherBlockQuantized`` and ``MatMulNBits``: stored once, at ``bits``.
    ``accuracy_level`` is the head's; it matters: an 8-bit MatMulNBits at level 0 dequantizes on every call (measured
    here on a 576x1536 layer: 2.6 ms per decode row against 28 us at level 4), and the head is the widest layer."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    gathers = {n.input[0]: n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in initializers}
    transposes = {n.output[0]: n for n in model.graph.node if n.op_type == "Transpose" and n.input[0] in gathers}
    heads = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in transposes]
    if len(heads) != 1:
        return False
    head = heads[0]
    transpose = transposes[head.input[1]]
    gather = gathers[transpose.input[0]]
    table = tensor_array(initializers[gather.input[0]], base_dir)  # [vocab, hidden]
    vocab, hidden = table.shape
    if hidden % block_size:
        return False
    packed, scales = quantize_blocks(table.T, block_size, bits)  # blocks run along hidden (a view: no copy)
    name = f"{gather.input[0]}_q{bits}"
    new_inits = [numpy_helper.from_array(packed, name), numpy_helper.from_array(scales.reshape(-1), f"{name}_scales"),
                 numpy_helper.from_array(np.array([*scales.shape, 1], np.int64), f"{name}_scales3_shape"),
                 numpy_helper.from_array(np.array([hidden], np.int64), f"{name}_hidden")]
    gather_inputs = [name, gather.input[1], f"{name}_scales3"]
    if bits == 8:
        new_inits.append(numpy_helper.from_array(np.full(scales[..., None].shape, 128, np.uint8), f"{name}_zero"))
        gather_inputs.append(f"{name}_zero")
    blocks_out = f"{gather.output[0]}_blocks"
    graph_nodes = list(model.graph.node)
    position = {name: next(i for i, n in enumerate(graph_nodes) if n == node)
                for name, node in (("gather", gather), ("transpose", transpose), ("head", head))}
    replacement = {
        position["gather"]: [
            # the Gather's [vocab, blocks, 1] view of the head's scales: stored once (ORT folds the Reshape at load)
            helper.make_node("Reshape", [f"{name}_scales", f"{name}_scales3_shape"], [f"{name}_scales3"]),
            helper.make_node("GatherBlockQuantized", gather_inputs, [blocks_out], name=f"{name}_gather",
                             domain="com.microsoft", gather_axis=0, quantize_axis=2,
                             block_size=block_size, bits=bits),
            # [..., blocks, block_size] -> [..., hidden]
            helper.make_node("Shape", [gather.input[1]], [f"{name}_ids_shape"]),
            helper.make_node("Concat", [f"{name}_ids_shape", f"{name}_hidden"], [f"{name}_out_shape"], axis=0),
            helper.make_node("Reshape", [blocks_out, f"{name}_out_shape"], list(gather.output)),
        ],
        position["transpose"]: [],
        position["head"]: [helper.make_node("MatMulNBits", [head.input[0], name, f"{name}_scales"], list(head.output),
                                    name=f"{name}_lm_head", domain="com.microsoft", K=hidden, N=vocab, bits=bits,
                                    block_size=block_size, accuracy_level=accuracy_level)],
    }
    nodes = [new for i, node in enumerate(graph_nodes) for new in replacement.get(i, [node])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.remove(initializers[gather.input[0]])
    model.graph.initializer.extend(new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return True
