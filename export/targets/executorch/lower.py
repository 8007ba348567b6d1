"""torch.export -> ``to_edge_transform_and_lower`` (XNNPACK) -> ``.pte`` for one component, with the delegation report.

- Encoders: the family's export wrapper (shared with ONNX, LiteRT and Core ML) at the LiteRT target's static shapes,
  batch 1, one method ``forward`` with positional inputs in the manifest's order.
- ``text_decoder``: the Core ML target's ``stateful_decoder`` with a float32 KV cache: ``key_cache`` / ``value_cache``
  become the program's mutable buffers, which persist across ``execute()`` calls of one loaded method (ExecuTorch's
  LLM exports keep their cache the same way). The sequence length is dynamic (``Dim.AUTO`` on every dimension that
  follows it), exported at ``prefill_length`` tokens: ExecuTorch plans memory at that example, so a call may have 1
  to ``prefill_length`` tokens and no padding is needed.
- The delegation report is read with ``get_delegation_info`` before ``to_executorch`` (which rewrites the same graph
  in place and would count its alloc / out-variant nodes as non-delegated).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pocketvlm.export.hf_quiet import quiet_tool
from pocketvlm.export.rewrites import grouped_attention
from pocketvlm.export.spec import ComponentDef
from pocketvlm.export.targets.base import require_tool
from pocketvlm.export.targets.coreml.decoder import decoder_feeds, stateful_decoder
from pocketvlm.runtime.errors import ExportError
from pocketvlm.runtime.executorch import SEQUENCE_DIMS  # the dims made dynamic here are the ones the session allows

BACKEND = "xnnpack"


def positional(module: Any, names: Sequence[str]) -> Any:
    """``module(**feeds)`` as a positional module (ExecuTorch methods take a list of inputs, in ``names`` order)."""
    import torch

    class Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args: torch.Tensor) -> Any:
            return self.inner(**dict(zip(names, args, strict=True)))

    return Positional().eval()


def encoder_program(model: Any, component: ComponentDef, feeds: dict[str, Any]) -> tuple[Any, tuple[Any, ...]]:
    """The encoder's wrapper (positional, in the manifest's input order) and its static example inputs."""
    in_defs, _ = component.signature(model.config)
    return component.wrap(model).eval(), tuple(feeds[t.name] for t in in_defs)


def decoder_program(model: Any, component: ComponentDef, prefill_length: int,
                    capacity: int) -> tuple[Any, dict[str, Any], tuple[Any, ...]]:
    """The stateful float32-cache decoder (positional), its example feeds by name, and its dynamic shapes."""
    import torch

    module, _ = stateful_decoder(model, component, capacity, cache_dtype=torch.float32)
    feeds = decoder_feeds(component, model.config, prefill_length, capacity)
    in_defs = {t.name: t for t in component.signature(model.config)[0]}
    dynamic = []
    for name in feeds:
        shape = in_defs[name].shape if name in in_defs else ("sequence",)  # cache_position [N]
        dynamic.append({axis: torch.export.Dim.AUTO for axis, dim in enumerate(shape) if dim in SEQUENCE_DIMS}
                       or None)
    return positional(module, list(feeds)), feeds, tuple(dynamic)


def lower(module: Any, example: tuple[Any, ...], dynamic: tuple[Any, ...] | None, path: Path, label: str,
          attention: Any = None) -> dict[str, Any]:
    """Export, lower to XNNPACK, write ``path``; return the delegation report."""
    import contextlib

    import torch

    require_tool("executorch", "executorch", "executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    try:
        with quiet_tool(), torch.no_grad(), attention or contextlib.nullcontext():
            program = torch.export.export(module, example, dynamic_shapes=(dynamic,) if dynamic else None,
                                          strict=False)
            program = program.run_decompositions(rewrites())
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            report = delegation(edge.exported_program().graph_module)
            path.write_bytes(edge.to_executorch(ExecutorchBackendConfig()).buffer)
    except ExportError:
        raise
    except Exception as exc:  # torch.export and the ExecuTorch passes raise many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ExecuTorch lowering of {label} failed: {first[:300]}",
                          "report the model config; the ONNX target may support it (--target onnx)") from exc
    return report


def tanh_gelu(x: Any, approximate: str = "none") -> Any:
    """``gelu(approximate="tanh")`` written out: ExecuTorch 1.5.1's XNNPACK GELU visitor drops ``approximate`` and
    computes the exact erf GELU (``backends/xnnpack/operators/op_gelu.py``: ``XNNGelu`` has no such field), which
    put SigLIP's towers 3e-4 / 9e-4 off PyTorch. Exact GELU is kept as it is (NotImplemented: no decomposition)."""
    import math

    import torch

    if approximate != "tanh":
        return NotImplemented
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
    return 0.5 * x * (1.0 + torch.tanh(inner))


def patch_conv(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
               *rest: Any) -> Any:
    """A convolution whose kernel covers its whole (5-D) input, as one matmul: Qwen-VL's Conv3d patch embedding
    (kernel = stride = temporal x patch x patch over [patches, C, T, P, P]). Neither XNNPACK nor ExecuTorch's
    portable kernels run a 5-D convolution ("Expect input tensor to be 3-D or 4-D"). Anything else: unchanged."""
    if x.dim() != 5 or tuple(x.shape[2:]) != tuple(weight.shape[2:]) or any(_ints(padding)) or (rest and any(
            isinstance(r, bool) and r for r in rest)):
        return NotImplemented
    groups = rest[-1] if rest else 1
    if groups != 1:
        return NotImplemented
    out = x.reshape(x.shape[0], -1) @ weight.reshape(weight.shape[0], -1).t()
    if bias is not None:
        out = out + bias
    return out.reshape(x.shape[0], weight.shape[0], 1, 1, 1)


def _ints(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


def rewrites() -> dict[Any, Any]:
    """ATen op -> the export-friendly form the program is decomposed into before lowering (each returns
    NotImplemented where it does not apply, which keeps the op as it is)."""
    import torch

    aten = torch.ops.aten
    return {aten.gelu.default: tanh_gelu, aten.conv3d.default: patch_conv, aten.convolution.default: patch_conv}


def lower_component(model: Any, component: ComponentDef, path: Path, feeds: dict[str, Any] | None,
                    prefill_length: int, capacity: int) -> dict[str, Any]:
    """One component's ``.pte``; ``feeds``: an encoder's static example feeds (None for the decoder)."""
    if feeds is None:
        module, feeds, dynamic = decoder_program(model, component, prefill_length, capacity)
        return lower(module, tuple(feeds.values()), dynamic, path, component.name, grouped_attention(model))
    module, example = encoder_program(model, component, feeds)
    return lower(module, example, None, path, component.name)


def delegation(graph_module: Any) -> dict[str, Any]:
    """Delegated subgraphs, delegated / non-delegated node counts and share, and every op left outside a delegate
    with its count (``getitem`` and ``sym_size`` included: they are graph plumbing, named as such)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    outside = {op: row.non_delegated for op, row in sorted(info.delegation_by_operator.items())
               if row.non_delegated}
    total = info.num_delegated_nodes + info.num_non_delegated_nodes
    return {"backend": BACKEND, "delegated_subgraphs": info.num_delegated_subgraphs,
            "delegated_nodes": info.num_delegated_nodes, "non_delegated_nodes": info.num_non_delegated_nodes,
            "delegated_share": round(info.num_delegated_nodes / total, 4) if total else 0.0,
            "non_delegated_ops": outside}
