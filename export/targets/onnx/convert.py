"""fp32 ONNX export of one component with ``torch.onnx.export(dynamo=True)``."""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any

import torch

from pocketvlm.export.hf_quiet import quiet_tool
from pocketvlm.export.rewrites import grouped_attention
from pocketvlm.export.spec import ComponentDef
from pocketvlm.runtime.errors import ExportError

OPSET = 18  # ORT mobile / web builds support it; nothing our graphs need is newer
FOLD_IN_MEMORY_LIMIT = 1 << 16  # elements: transposes of larger weights are folded lazily, at write time


def dynamic_shapes(component: ComponentDef, config: Any, module: torch.nn.Module) -> tuple:
    """Symbolic dim names in the component signature -> shared ``torch.export.Dim`` objects, laid out like the
    wrapper's positional parameters (trailing ``*args`` such as flat KV caches grouped in one tuple). A bound of
    ``None`` means ``Dim.AUTO``: a dim the exporter derives from the others (an attention mask of past + new)."""
    in_defs, _ = component.signature(config)
    bounds = component.dim_bounds(config)
    dims: dict[str, Any] = {}
    per_input = []
    for tensor in in_defs:
        axes = {}
        for axis, dim in enumerate(tensor.shape):
            if isinstance(dim, str):
                if dim not in dims:
                    bound = bounds.get(dim, (1, 2**20))
                    dims[dim] = torch.export.Dim.AUTO if bound is None else torch.export.Dim(dim, min=bound[0],
                                                                                           max=bound[1])
                axes[axis] = dims[dim]
        per_input.append(axes)
    params = list(inspect.signature(module.forward).parameters.values())
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params) and len(per_input) > len(named):
        return (*per_input[: len(named)], tuple(per_input[len(named):]))
    return tuple(per_input)



def _large_weight_transpose(node: Any) -> bool:
    """A Transpose of one large initializer (nn.Linear's weight on a 3-D input exports as MatMul(x, W^T))."""
    source = node.inputs[0] if node.op_type == "Transpose" and node.domain == "" and len(node.inputs) == 1 else None
    return bool(source is not None and source.is_initializer() and source.const_value is not None
                and source.const_value.size > FOLD_IN_MEMORY_LIMIT)


def _optimize(model: Any) -> None:
    """What ``torch.onnx.export(optimize=True)`` does (onnxscript's constant folding and fusions), except that the
    transposes of large weights are folded lazily: onnxscript folds each one into a new array at once, which held a
    transposed copy of every decoder weight beside the torch model (measured on a 174M-parameter Qwen2-VL: export
    peak RSS 2.9 GB against 0.7 GB of weights). Here each transposed weight is computed when it is written and then
    dropped, so export peak memory stays near the torch model's own size."""
    import onnxscript.optimizer
    import onnxscript.rewriter.onnx_fusions
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization

    def should_fold(node: Any) -> bool | None:
        return False if _large_weight_transpose(node) else None

    onnxscript.optimizer.optimize_ir(model, should_fold=should_fold)
    onnxscript.rewriter.onnx_fusions.fuse(model)
    # RMSNorm as one ONNX Runtime kernel (ORT fuses it further with the residual Add into SkipSimplifiedLayerNorm at
    # load): measured on the Qwen2-VL-2B int4 decoder here, 57 norms of 7 nodes each, decode 20.8 -> 22.3 tok/s
    fuse_rms_normalization(model)
    _fold_weight_transposes_lazily(model.graph)
    onnxscript.optimizer.remove_unused_nodes(model)


def _fold_weight_transposes_lazily(graph: Any) -> None:
    import numpy as np
    import onnx_ir as ir

    for node in list(graph):
        if not _large_weight_transpose(node):
            continue
        source = node.inputs[0]
        if len(source.uses()) != 1:  # e.g. a tied embedding / LM head table: the quantizer handles that pattern
            continue
        perm = node.attributes.get_ints("perm", None)
        rank = len(source.const_value.shape)
        perm = list(perm) if perm is not None else list(range(rank))[::-1]
        weight = source.const_value

        def transposed(weight: Any = weight, perm: list[int] = perm) -> Any:
            return ir.Tensor(np.ascontiguousarray(weight.numpy().transpose(perm)))

        shape = ir.Shape([weight.shape[axis] for axis in perm])
        lazy = ir.LazyTensor(transposed, dtype=weight.dtype, shape=shape, name=f"{source.name}_T")
        value = ir.Value(name=f"{source.name}_T", shape=shape, type=ir.TensorType(weight.dtype), const_value=lazy)
        graph.register_initializer(value)
        node.outputs[0].replace_all_uses_with(value)
        graph.remove(node, safe=True)
        graph.initializers.pop(source.name)


def _release_torch_weights() -> None:
    """Drop every ONNX IR value's reference to a torch weight once the graph is saved.

    onnxscript's rewrite rules keep their last matches alive after an export, and through them detached nodes and
    values that still hold the model's parameters. transformers memory-maps a checkpoint as one storage, so a single
    leaked parameter keeps every page the export touched resident: on Qwen2-VL-2B, 8.3 GB through quantization
    (export peak RSS 1.69x the fp32 weights instead of ~1.0x). The values are unreachable from anything pocketvlm
    uses, so this finds them through the garbage collector."""
    import gc

    import onnx_ir as ir
    from torch.onnx._internal.exporter._core import TorchTensor

    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, ir.Value) and isinstance(obj.const_value, (TorchTensor, ir.LazyTensor)):
            obj.const_value = None
    gc.collect()


def export_component(model: Any, component: ComponentDef, path: Path,
                     static_inputs: dict[str, Any] | None = None) -> None:
    """fp32 graph of ``component`` at ``path``: dynamic dims as the signature declares them, or, with
    ``static_inputs``, every shape fixed to those feeds' (the QNN target's graphs)."""
    module = component.wrap(model).eval()
    inputs = static_inputs if static_inputs is not None else component.example_inputs(model.config)
    in_defs, out_defs = component.signature(model.config)
    if list(inputs) != [t.name for t in in_defs]:
        raise ExportError(f"{component.name}: example inputs {list(inputs)} differ from the signature",
                          "fix the family module")
    # decoders: grouped-query attention without repeat_kv's copies of the KV cache (same math; see rewrites)
    attention = grouped_attention(model) if component.name == "text_decoder" else contextlib.nullcontext()
    try:
        with quiet_tool("torch.onnx", stderr=False), torch.no_grad(), attention:
            program = torch.onnx.export(
                module,
                args=tuple(inputs.values()),
                dynamo=True,
                opset_version=OPSET,
                input_names=[t.name for t in in_defs],
                output_names=[t.name for t in out_defs],
                dynamic_shapes=None if static_inputs is not None else dynamic_shapes(component, model.config,
                                                                                     module),
                optimize=False,  # the exporter's optimizer copies every transposed weight at once: see _optimize
                verbose=False,
            )
            _optimize(program.model)
            # weights always beside the graph, written one tensor at a time (a 2B decoder never sits in memory twice)
            program.save(str(path), external_data=True)
            _release_torch_weights()
    except Exception as exc:  # the exporter raises many internal error types; report them as one
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export of {component.name} failed: {first}",
                          "report the model config; try a smaller config to isolate the failing op") from exc
