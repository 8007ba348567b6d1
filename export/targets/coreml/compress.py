"""Core ML weight compression (coremltools ``optimize.coreml``), per component: ``fp16`` (none beyond the fp16
program), ``int8`` (linear symmetric, per output channel), ``int4`` (linear symmetric, per block of ``block_size``
input channels, iOS 18) and ``palette4`` (4-bit k-means look-up tables, one per group of 16 output channels). As on
the other targets, the first and last weight layers and embedding tables stay at 8 bits under int4 and palette4
(``first_layer_bits`` / ``last_layer_bits``), and the manifest says which weights were left uncompressed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.targets.coreml.common import quiet
from pocketvlm.runtime.errors import QuantizationError

PALETTE_GROUP = 16  # output channels sharing one palette (per_grouped_channel)
WEIGHT_THRESHOLD = 2048  # coremltools' default: smaller constants (norms, biases) stay fp16


def _weight_consts(mlmodel: Any) -> tuple[list[str], list[str]]:
    """(const names feeding weight ops in program order, const names of gathered tables)."""
    block = mlmodel.get_spec().mlProgram.functions["main"]
    block = block.block_specializations[block.opset]
    const_names = {op.outputs[0].name for op in block.operations if op.type == "const"}
    weights, tables = [], []
    for operation in block.operations:
        key = {"linear": "weight", "conv": "weight", "matmul": "y", "gather": "x"}.get(operation.type)
        if key is None or key not in operation.inputs:
            continue
        name = operation.inputs[key].arguments[0].name
        if name in const_names:
            (tables if operation.type == "gather" else weights).append(name)
    return weights, tables


def _op_config(spec: QuantSpec, bits: int) -> Any:
    import coremltools.optimize.coreml as cto

    if spec.method == "palette4" and bits == 4:
        return cto.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_grouped_channel",
                                      group_size=PALETTE_GROUP, weight_threshold=WEIGHT_THRESHOLD)
    if bits == 4:
        return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                           block_size=spec.block_size, weight_threshold=WEIGHT_THRESHOLD)
    return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                       weight_threshold=WEIGHT_THRESHOLD)


def compress_package(source: Path, target: Path, spec: QuantSpec) -> dict[str, Any]:
    """Write ``target`` from the fp16 package ``source`` with ``spec``'s weight compression; returns what was done
    (for the manifest): which weights are 8-bit by policy and which stayed fp16."""
    if spec.method == "fp16":
        shutil.copytree(source, target)
        return {"eight_bit": [], "fp16_weights": []}
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    mlmodel = ct.models.MLModel(str(source), skip_model_load=True)
    weights, tables = _weight_consts(mlmodel)
    eight_bit: list[str] = []
    if spec.method in ("int4", "palette4"):
        eight_bit = list(tables)
        if weights and spec.first_layer_bits == 8:
            eight_bit.append(weights[0])
        if weights and spec.last_layer_bits == 8:
            eight_bit.append(weights[-1])
    bits = 8 if spec.method == "int8" else 4
    config = cto.OptimizationConfig(global_config=_op_config(spec, bits),
                                    op_name_configs={name: _op_config(spec, 8) for name in dict.fromkeys(eight_bit)})
    try:
        with quiet():
            if spec.method == "palette4":
                # palettize the 4-bit weights, then linearly quantize the ones kept at 8 bits
                four = cto.OptimizationConfig(global_config=_op_config(spec, 4),
                                              op_name_configs={name: None for name in eight_bit})
                compressed = cto.palettize_weights(mlmodel, four)
                if eight_bit:
                    compressed = cto.linear_quantize_weights(compressed, cto.OptimizationConfig(
                        global_config=None, op_name_configs={name: _op_config(spec, 8) for name in eight_bit}))
            else:
                compressed = cto.linear_quantize_weights(mlmodel, config)
            compressed.save(str(target))
    except Exception as exc:  # coremltools validates configs with ValueError / NotImplementedError
        raise QuantizationError(f"coremltools could not apply {spec.method} to {source.name}: "
                                f"{str(exc).splitlines()[0][:300]}", "try fp16 or int8 for this component") from exc
    return {"eight_bit": sorted(set(eight_bit)), "fp16_weights": _uncompressed(target)}


def _uncompressed(package: Path) -> list[str]:
    """Constant weights of weight ops that stayed fp16 (below the size threshold or not divisible into blocks)."""
    import coremltools as ct

    weights, tables = _weight_consts(ct.models.MLModel(str(package), skip_model_load=True))
    return sorted(set(weights + tables))


def quant_record(spec: QuantSpec, done: dict[str, Any]) -> dict[str, Any]:
    eight = {"eight_bit_weights": done["eight_bit"], "fp16_weights": done["fp16_weights"]}
    if spec.method == "fp16":
        return {"method": "fp16", "weights": "float16", "activations": "float16 (fp16 compute)", "io": "float32",
                **eight}
    if spec.method == "int8":
        return {"method": "int8", "weights": "int8 linear symmetric, per output channel "
                                             "(constexpr_blockwise_shift_scale)",
                "activations": "float16", "embedding_bits": 8, **eight}
    if spec.method == "int4":
        rounding = "GPTQ-calibrated (pocketvlm)" if spec.gptq else "min-max scales, round to nearest (coremltools)"
        return {"method": "int4", "weights": f"int4 linear symmetric, per block of {spec.block_size} input channels, "
                                             f"{rounding} (constexpr_blockwise_shift_scale, iOS 18)",
                "activations": "float16", "block_size": spec.block_size, "embedding_bits": 8, "gptq": spec.gptq,
                "first_layer_bits": spec.first_layer_bits, "last_layer_bits": spec.last_layer_bits, **eight}
    return {"method": "palette4", "weights": f"4-bit k-means palettes, one per {PALETTE_GROUP} output channels "
                                             "(constexpr_lut_to_dense, iOS 18)",
            "activations": "float16", "embedding_bits": 8, "first_layer_bits": spec.first_layer_bits,
            "last_layer_bits": spec.last_layer_bits, **eight}
