"""Graph edits that keep whole graphs on the HTP.

``GatherND`` (transformers builds attention masks as ``mask[batch_idx, kv_idx]`` over index grids, which the
exporter writes as GatherND on a bool tensor; Qwen2.5-VL reorders rotary rows by its window index with it): the HTP
backend refuses it on bool data (QNN error 3110, seen on uint8 too), which leaves one node on CPU and splits the
graph, and on float data with runtime indices the emulated HTP returned wrong rows (cosine 0.93 against CPU, no
error). With a static data shape it is exactly a ``Gather`` of flat indices from the data reshaped to
``[prod(indexed dims), *rest]``; bool data goes through float around it (the HTP refused Gather of uint8 too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _load(path: Path) -> tuple[Any, dict[str, Any], dict[str, np.ndarray]]:
    """The graph at ``path`` with its weights, its tensors' inferred types, and its constant values by name."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    inferred = shape_inference.infer_shapes(model)
    infos = {v.name: v.type.tensor_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return model, infos, constants


def _save(model: Any, nodes: list[Any], path: Path) -> None:
    """``model`` with its node list replaced by ``nodes``, written back to ``path``. The weights are in memory
    (``_load`` read them), and onnx refuses to overwrite an external-data file: the scratch graph's old one goes
    first."""
    import onnx

    del model.graph.node[:]
    model.graph.node.extend(nodes)
    path.with_name(path.name + ".data").unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")


def gathernd_to_gather(path: Path) -> int:
    """Rewrite every GatherND (batch_dims 0, static data shape) in the graph at ``path`` in place as a Gather of
    flat indices: precomputed where the indices are constant, computed in the graph (indices x strides, summed)
    where they are not; returns how many were rewritten."""
    from onnx import TensorProto, helper, numpy_helper

    model, infos, constants = _load(path)
    graph = model.graph
    nodes, done = [], 0
    for node in graph.node:
        batch_dims = next((a.i for a in node.attribute if a.name == "batch_dims"), 0)
        info = infos.get(node.input[0]) if node.op_type == "GatherND" else None
        indices = constants.get(node.input[1]) if node.op_type == "GatherND" else None
        index_info = infos.get(node.input[1]) if node.op_type == "GatherND" else None
        shape = [d.dim_value if d.HasField("dim_value") else None for d in info.shape.dim] if info else None
        index_shape = [d.dim_value if d.HasField("dim_value") else None
                       for d in index_info.shape.dim] if index_info else None
        depth = indices.shape[-1] if indices is not None else (index_shape[-1] if index_shape else None)
        if depth is None or batch_dims or not shape or None in shape:
            nodes.append(node)
            continue
        strides = np.cumprod([1, *shape[:depth][::-1]])[:-1][::-1].astype(np.int64)
        prefix = f"{node.name or node.output[0]}_as_gather"
        if indices is not None:
            graph.initializer.append(numpy_helper.from_array((indices.astype(np.int64) * strides).sum(-1),
                                                             f"{prefix}_flat"))
        else:  # runtime indices (Qwen2.5-VL's window order): the flat index computed in the graph
            graph.initializer.extend([numpy_helper.from_array(strides, f"{prefix}_strides"),
                                      numpy_helper.from_array(np.array([-1], np.int64), f"{prefix}_last")])
            nodes.append(helper.make_node("Mul", [node.input[1], f"{prefix}_strides"], [f"{prefix}_scaled"],
                                          name=f"{prefix}_mul"))
            nodes.append(helper.make_node("ReduceSum", [f"{prefix}_scaled", f"{prefix}_last"], [f"{prefix}_flat"],
                                          keepdims=0, name=f"{prefix}_sum"))
        data = node.input[0]
        is_bool = info.elem_type == TensorProto.BOOL
        if is_bool:
            nodes.append(helper.make_node("Cast", [data], [f"{prefix}_u8"], to=TensorProto.FLOAT, name=f"{prefix}_in"))
            data = f"{prefix}_u8"
        graph.initializer.append(numpy_helper.from_array(
            np.array([int(np.prod(shape[:depth])), *shape[depth:]], np.int64), f"{prefix}_shape"))
        nodes.append(helper.make_node("Reshape", [data, f"{prefix}_shape"], [f"{prefix}_rows"], name=f"{prefix}_rs"))
        out = f"{prefix}_out" if is_bool else node.output[0]
        nodes.append(helper.make_node("Gather", [f"{prefix}_rows", f"{prefix}_flat"], [out], axis=0, name=node.name))
        if is_bool:
            nodes.append(helper.make_node("Cast", [out], [node.output[0]], to=TensorProto.BOOL, name=f"{prefix}_o"))
        done += 1
    if done:
        _save(model, nodes, path)
    return done


def degenerate_clips(path: Path) -> int:
    """``Clip`` with constant ``min == max`` (``index.clamp(0, rows - 1)`` over a single image row in a decode graph)
    as ``x * 0 + min``: the HTP's ReluMinMax refuses an empty range at run time ("reluXY limit 0 not > 0")."""
    from onnx import helper, numpy_helper

    model, _, constants = _load(path)
    graph = model.graph
    nodes, done = [], 0
    for node in graph.node:
        bounds = [constants.get(name) for name in node.input[1:3]] if node.op_type == "Clip" else []
        if len(bounds) != 2 or any(b is None for b in bounds) or not np.array_equal(bounds[0], bounds[1]):
            nodes.append(node)
            continue
        prefix = f"{node.name or node.output[0]}_degenerate"
        graph.initializer.append(numpy_helper.from_array(np.zeros((), bounds[0].dtype), f"{prefix}_zero"))
        nodes.append(helper.make_node("Mul", [node.input[0], f"{prefix}_zero"], [f"{prefix}_z"], name=f"{prefix}_mul"))
        nodes.append(helper.make_node("Add", [f"{prefix}_z", node.input[1]], [node.output[0]], name=node.name))
        done += 1
    if done:
        _save(model, nodes, path)
    return done


def rmsnorm_over_rank3(path: Path) -> int:
    """``SimplifiedLayerNormalization`` (RMSNorm) of a rank-4 tensor over its last axis (Qwen3's per-head q_norm /
    k_norm) as the same op on a rank-3 view: on the emulated HTP the rank-4 form compiled, ran, and returned wrong
    values (cosine 0.77 against CPU on a tiny Qwen3-VL), while the rank-3 form (every hidden-state norm) is right."""
    from onnx import helper, numpy_helper

    model, infos, _ = _load(path)
    graph = model.graph
    nodes, done = [], 0
    for node in graph.node:
        info = infos.get(node.input[0]) if node.op_type == "SimplifiedLayerNormalization" else None
        shape = [d.dim_value if d.HasField("dim_value") else None for d in info.shape.dim] if info else []
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if len(shape) != 4 or None in shape or axis not in (-1, 3):
            nodes.append(node)
            continue
        prefix = f"{node.name or node.output[0]}_rank3"
        graph.initializer.extend([
            numpy_helper.from_array(np.array([1, int(np.prod(shape[:-1])), shape[-1]], np.int64), f"{prefix}_in"),
            numpy_helper.from_array(np.array(shape, np.int64), f"{prefix}_out")])
        nodes.append(helper.make_node("Reshape", [node.input[0], f"{prefix}_in"], [f"{prefix}_x"], name=f"{prefix}_a"))
        norm = helper.make_node("SimplifiedLayerNormalization", [f"{prefix}_x", *node.input[1:]], [f"{prefix}_y"],
                                name=node.name, domain=node.domain)
        norm.attribute.extend(node.attribute)
        nodes.append(norm)
        nodes.append(helper.make_node("Reshape", [f"{prefix}_y", f"{prefix}_out"], [node.output[0]],
                                      name=f"{prefix}_b"))
        done += 1
    if done:
        _save(model, nodes, path)
    return done
