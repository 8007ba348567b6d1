"""Checking Core ML bundles without a Mac: the reference evaluator as a runtime predictor, and a Neural Engine risk
report read from each package's program.

``parity`` (and the shapes evaluations) run Core ML bundles through the runtime's ``CoreMLSession`` exactly as an
app would; on macOS the predictor is Core ML itself (``predictor.MLModelPredictor``),
elsewhere ``load_runner`` injects ``EvaluatorPredictor``. Both paths share every line of pre- and post-processing and
the comparison code.

The risk report is static analysis against Apple's published Neural Engine guidance and known public issues, not a
measurement: it names, per component, what in the package is known to run badly on or fall back from the ANE, and a
change that avoids it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.targets.coreml.mil_eval import MILProgram, function_names
from pocketvlm.export.targets.coreml.predictor import platform_predictor
from pocketvlm.export.targets.executorch.predictor import local_predictor
from pocketvlm.runtime.dual_encoder import DualEncoder
from pocketvlm.runtime.manifest import Bundle, load_bundle
from pocketvlm.runtime.vlm import VisionLanguageModel

ANE_MAX_DIM = 16384  # the Neural Engine rejects tensors with a dimension above this (Apple's ml-ane-transformers)
ANE_MAX_RANK = 5
INTEGER_TYPES = ("INT32", "INT16", "INT64", "UINT8", "INT8", "BOOL")


class EvaluatorPredictor:
    """A ``runtime.coreml.Predictor`` backed by the numpy reference evaluator."""

    name = "pocketvlm reference evaluator (numpy; graph and weights, not ANE/GPU numerics)"

    def __init__(self, package: Path) -> None:
        self.package = package
        self.program = MILProgram(package)
        self._programs: dict[str, MILProgram] = {}

    def _function(self, name: str | None) -> MILProgram:
        if name is None:
            return self.program
        if name not in self._programs:
            self._programs[name] = MILProgram(self.package, function=name, blob_values=self.program._blob_values)
        return self._programs[name]

    def predict(self, feeds: dict[str, np.ndarray], function: str | None = None,
                state: Any = None) -> dict[str, np.ndarray]:
        return self._function(function).run(feeds, state)

    def make_state(self) -> dict[str, np.ndarray]:
        return self.program.new_state()


def load_runner(bundle_dir: Path | str, threads: int = 0) -> DualEncoder | VisionLanguageModel:
    """The runtime's model for any bundle. Core ML packages run on the runtime's own choice on macOS (Core ML
    itself), and on the reference evaluator elsewhere; ExecuTorch programs on ``executorch.runtime``."""
    bundle = load_bundle(bundle_dir)
    cls = VisionLanguageModel if bundle.manifest.get("task") == "image_text_to_text" else DualEncoder
    return cls.load(bundle, threads=threads, predictor=local_predictor(core_ml_predictor()))


def core_ml_predictor() -> Any:
    """What runs Core ML packages here: Core ML itself on macOS, the reference evaluator elsewhere."""
    return platform_predictor() or EvaluatorPredictor


# -- Neural Engine risk report -----------------------------------------------------------------------------------------
def _dims(value_type: Any) -> tuple[str, list[int]]:
    from coremltools.proto import MIL_pb2

    tensor = value_type.tensorType
    return MIL_pb2.DataType.Name(tensor.dataType), [int(d.constant.size) for d in tensor.dimensions]


def ane_risks(package: Path) -> list[dict[str, Any]]:
    """Findings for one package (over all its functions): each with the issue, where (op types and counts), why,
    and a suggested change."""
    programs = [MILProgram(package, name) for name in function_names(package)]
    findings: list[dict[str, Any]] = []
    per_block, integer_ops, big_dims, high_rank, float32_ops = Counter(), Counter(), Counter(), Counter(), Counter()
    program = programs[0]
    for operation in (op for p in programs for op in p.block.operations):
        if operation.type == "const":
            continue
        if operation.type == "constexpr_blockwise_shift_scale":
            data = operation.inputs["data"].arguments[0]
            scale = operation.inputs["scale"].arguments[0]
            if data.WhichOneof("binding") == "value" and scale.WhichOneof("binding") == "value":
                _, data_shape = _dims(data.value.type)
                _, scale_shape = _dims(scale.value.type)
                if sum(1 for d, s in zip(data_shape, scale_shape) if s not in (1, d)) > 0:
                    per_block[_dims(data.value.type)[0]] += 1
            continue
        if operation.type.startswith("constexpr_"):
            continue
        for output in operation.outputs:
            dtype, shape = _dims(output.type)
            if dtype in INTEGER_TYPES and operation.type not in ("read_state",):
                integer_ops[operation.type] += 1
            if dtype == "FLOAT32" and operation.type != "cast":
                float32_ops[operation.type] += 1
            if any(d > ANE_MAX_DIM for d in shape):
                big_dims[operation.type] += 1
            if len(shape) > ANE_MAX_RANK:
                high_rank[operation.type] += 1
    if per_block:
        findings.append({
            "risk": "per-block quantized weights",
            "where": dict(per_block),
            "why": "iOS 18 per-block (block-wise) weights are a GPU-oriented format: the ANE runs them through a "
                   "slower decompression path or not at all, and public reports show them silently wrong there "
                   "(coreai-models #279: per-block int8 cosine 0.367 on the Neural Engine)",
            "suggestion": "for ANE deployment use palette4 (grouped-channel palettes) or int8 per channel; keep "
                          "int4 per-block for GPU-targeted bundles, and check on a device",
        })
    if integer_ops:
        findings.append({
            "risk": "integer or boolean tensors",
            "where": dict(integer_ops),
            "why": "the ANE computes in fp16; ops producing int32/bool tensors (casts, comparisons, gathers of "
                   "indices, argmax) run on the CPU, splitting the graph into ANE and CPU segments",
            "suggestion": "precompute index and mask tensors in the runtime and feed them as fp16 inputs, or accept "
                          "the CPU segments (small when these ops are at the graph's edges)",
        })
    if float32_ops:
        findings.append({
            "risk": "float32 compute",
            "where": dict(float32_ops),
            "why": "the ANE computes in fp16 only: these ops (normalisation statistics kept in float32 so that x * x "
                   "cannot overflow fp16 on a large residual stream) run on the GPU or CPU",
            "suggestion": "accept the split (a few small ops per layer), or bound the residual stream (e.g. scale "
                          "it before the norm) and export those ops in fp16",
        })
    if big_dims:
        findings.append({
            "risk": f"tensor dimensions above {ANE_MAX_DIM}",
            "where": dict(big_dims),
            "why": f"the ANE rejects tensors with a dimension larger than {ANE_MAX_DIM} (e.g. a vocabulary-sized "
                   "LM head or embedding gather); those ops fall back to GPU or CPU",
            "suggestion": "split the LM head into chunks of at most 16384 rows, or run the head on the GPU",
        })
    if high_rank:
        findings.append({
            "risk": f"tensors of rank above {ANE_MAX_RANK}",
            "where": dict(high_rank),
            "why": "the ANE supports tensors of rank at most 5; higher-rank reshapes and transposes fall back",
            "suggestion": "fold leading dimensions together in the export wrapper",
        })
    if program.states:
        findings.append({
            "risk": "stateful model (KV cache in Core ML states)",
            "where": {name: list(spec.shape) for name, spec in program.states.items()},
            "why": "states need iOS 18; a state update that rewrites the whole cache each step costs memory "
                   "bandwidth on every compute unit",
            "suggestion": "keep kv_capacity as small as the use allows; check placement in Xcode's performance report",
        })
    return findings


def risk_section(bundle: Bundle) -> dict[str, Any]:
    """The parity report's ``neural_engine`` block for a Core ML bundle (empty for other targets)."""
    if bundle.manifest.get("target") != "coreml":
        return {}
    return {"neural_engine": {name: ane_risks(bundle.file(spec.file)) for name, spec in bundle.components.items()}}


def format_risks(section: dict[str, Any]) -> str:
    lines = ["Neural Engine risk report (static analysis of the packages, not a device measurement):"]
    for name, findings in section.items():
        if not findings:
            lines.append(f"  {name}: no known ANE risks found")
        for finding in findings:
            where = ", ".join(f"{k} x{v}" if isinstance(v, int) else f"{k} {v}" for k, v in finding["where"].items())
            lines.append(f"  {name}: {finding['risk']} ({where}): {finding['suggestion']}")
    return "\n".join(lines)
