"""What the Core ML modules share: deployment targets, the fp16 compute policy, quiet coremltools, torch.export
clean-up, and the one digest of a package directory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.hf_quiet import quiet_tool
from pocketvlm.runtime.manifest import sha256_file

DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18")
DEFAULT_TARGET = "iOS18"


def strip_aliases(program: Any) -> Any:
    """``aten.alias`` is an identity coremltools 9.0 does not translate: point its users at its input."""
    import torch

    graph = program.graph_module.graph
    for node in list(graph.nodes):
        aliases = (torch.ops.aten.alias.default, torch.ops.aten.alias_copy.default)
        if node.op == "call_function" and node.target in aliases:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph.lint()
    program.graph_module.recompile()
    return program


def quiet() -> Any:
    """coremltools prints progress bars and version warnings; keep the CLI's output ours."""
    return quiet_tool("coremltools")


# Normalisation statistics stay in float32: a decoder's residual stream can exceed fp16's square root (SmolLM2-135M
# reaches 25,600 here), so x * x overflows fp16 (65,504) inside RMSNorm and the row normalises to zero. These ops,
# and the add / mul that consume their result, compute in float32; everything else in fp16.
FP32_OPS = ("pow", "reduce_mean", "reduce_sum_square", "rsqrt", "sqrt", "real_div", "inverse")


def keep_fp16(op: Any) -> bool:
    """coremltools' ``op_selector``: False keeps an op in float32 (see ``FP32_OPS``)."""
    if op.op_type in FP32_OPS:
        return False
    if op.op_type in ("add", "mul"):
        producers = [getattr(getattr(v, "op", None), "op_type", None) for v in op.inputs.values()]
        return not any(p in ("reduce_mean", "rsqrt", "reduce_sum_square", "sqrt") for p in producers)
    return True


def compute_precision(ct: Any) -> Any:
    return ct.transform.FP16ComputePrecision(op_selector=keep_fp16)


def ct_dtype(dtype: Any) -> Any:
    import torch

    if dtype in (torch.int64, torch.int32):
        return np.int32  # Core ML has no int64 tensors; ids and positions fit int32
    if dtype == torch.bool:
        return np.bool_
    return np.float32


def package_digest(package: Path) -> tuple[str, int]:
    """One sha256 and byte count for a package directory (over its files' relative paths and contents)."""
    digest, total = hashlib.sha256(), 0
    for path in sorted(p for p in package.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(package).as_posix()}\0{sha256_file(path)}\n".encode())
        total += path.stat().st_size
    return digest.hexdigest(), total
