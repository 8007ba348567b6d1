"""LiteRT quantization with ai-edge-quantizer: fp16, int8 (dynamic range, per channel) and int4 (block-wise
FULLY_CONNECTED with int8 dynamic activations; LM head, embedding table and convolutions int8; GPTQ with feeds
recorded through the fp32 bundle), and the manifest record of a ``.tflite`` component."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.hf_quiet import quiet_tool
from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.spec import ComponentDef
from pocketvlm.export.static_shapes import LOOP_DIMS, StaticShapes
from pocketvlm.runtime.errors import QuantizationError
from pocketvlm.runtime.manifest import sha256_file

BLOCK_SIZES = (32, 64, 128, 256)  # what ai-edge-quantizer's blockwise granularity offers


LM_HEAD = ".*logits.*"  # the LM head's op scope: its output is "<signature>_logits_output"


def edge_weight_scopes(model: Any) -> tuple[str, str] | None:
    """Regexes for the ONNX target's ``first_layer_bits`` / ``last_layer_bits`` layers in ``model`` (an
    ai-edge-quantizer flatbuffer object): the FULLY_CONNECTED weights read with the same input as the first such op
    of the first signature (e.g. layer 0's q, k and v projections), and with the same input as the last one (e.g. the
    last MLP down projection), leaving out the LM head (int8 anyway). Whole input groups, because ai-edge-quantizer
    keeps one set of statistics per tensor, from the first op that reads it: an int8 q projection ahead of GPTQ k and
    v projections left those without a Hessian and the shapes captioner at 0% of captions right. ai-edge-quantizer
    matches op scopes (output tensor names), which differ between signatures for the same weight (fused names, in
    another order), so each op reading one of those weights, in every signature, is matched by its exact scope."""
    import re

    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as flatbuffer

    def weighted(graph: Any) -> list[tuple[str, int, int]]:  # (scope, input tensor, weight buffer) in graph order
        found = []
        for op in graph.operators:
            name = flatbuffer.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
            weight = graph.tensors[op.inputs[1]] if len(op.inputs) > 1 else None
            if name != qtyping.TFLOperationName.FULLY_CONNECTED or weight is None \
                    or flatbuffer.get_tensor_data(weight, model.buffers) is None:
                continue
            scope = flatbuffer.get_op_scope(op, graph.tensors)
            if not re.search(LM_HEAD, scope):
                found.append((scope, op.inputs[0], weight.buffer))
        return found

    layers = weighted(model.subgraphs[0])
    if not layers:
        return None
    groups = [{buffer for _, read, buffer in layers if read == layers[index][1]} for index in (0, -1)]
    every = [op for graph in model.subgraphs for op in weighted(graph)]
    first, last = ("^(" + "|".join(sorted({re.escape(scope) for scope, _, buffer in every if buffer in group})) + ")$"
                   for group in groups)
    return first, last


def tflite_recipe(spec: QuantSpec, edges: tuple[str, str] | None = None) -> Any:
    """The ai-edge-quantizer recipe for one component; ``edges`` (``edge_weight_scopes``) are kept at int8 per
    channel in int4 recipes where ``first_layer_bits`` / ``last_layer_bits`` say 8."""
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    ops, manager = qtyping.TFLOperationName, recipe_manager.RecipeManager()
    if spec.method == "fp16":
        manager.add_weight_only_config(".*", ops.ALL_SUPPORTED, 16,
                                       algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    elif spec.method == "int8":  # dynamic range: int8 weights per channel, activations quantized at run time
        manager.add_dynamic_config(".*", ops.ALL_SUPPORTED, 8, qtyping.QuantGranularity.CHANNELWISE)
    elif spec.method == "int4":
        # block-wise int4 FULLY_CONNECTED weights; everything else with weights (tables, convolutions) int8 per
        # channel. ai-edge-quantizer's policy offers block-wise int4 with integer compute only (activations
        # quantized per call by the kernel, as in its LiteRT-LM recipes), not as weight-only float compute, and with
        # min-max scales only (its MSE search refuses block-wise granularity)
        manager.add_dynamic_config(".*", ops.ALL_SUPPORTED, 8, qtyping.QuantGranularity.CHANNELWISE)
        algorithm = (algorithm_manager.AlgorithmName.GPTQ if spec.gptq
                     else algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT)
        manager.add_dynamic_config(".*", ops.FULLY_CONNECTED, 4,
                                   qtyping.QuantGranularity[f"BLOCKWISE_{spec.block_size}"], algorithm)
        # the LM head (output "<signature>_logits_output") stays int8: with tied embeddings its weight is the token
        # table, which stays >= 8 bits (4-bit tables measured cosine 0.90-0.96; a zero padding row also gives a
        # zero block scale that XNNPACK refuses)
        manager.add_dynamic_config(LM_HEAD, ops.FULLY_CONNECTED, 8, qtyping.QuantGranularity.CHANNELWISE)
        # the first and last weight layers stay int8, as on ONNX (later configs win in ai-edge-quantizer)
        for scope, bits in zip(edges or (), (spec.first_layer_bits, spec.last_layer_bits), strict=False):
            if bits == 8:
                manager.add_dynamic_config(scope, ops.FULLY_CONNECTED, 8, qtyping.QuantGranularity.CHANNELWISE)
    return manager.get_quantization_recipe()


@contextlib.contextmanager
def gptq_corrections() -> Iterator[None]:
    """Two corrections to ai-edge-quantizer 0.10's GPTQ, undone on exit (no upstream issue found; see its
    ``algorithms/uniform_quantize/gptq.py``). Measured on the shapes captioner's int4 decoder (real SmolLM2-135M; 50
    test images, fp32 98% caption exact-match, VQA 84%): as shipped 36% (VQA 44%), with the first correction 94%
    (42%), with both 96% (54%); on 200 images with the first/last input groups at int8 too, 95.5% against 98.5% fp32
    (``benchmarks/results/shapes_eval_tflite_captioner.json``).

    - The error-propagation matrix. GPTQ (Frantar et al. 2022, Algorithm 1) spreads column i's rounding error with
      row i of the upper Cholesky factor of H^-1, which is the inverse Hessian of the columns not yet quantized.
      ``_prepare_hessian_inverse`` returns H^-1 itself, whose rows belong to the full problem, so every update after
      the first column compensates for the wrong residual. Here it returns that factor.
    - Padding rows. The runtime left-pads every ``prefill_N`` call with masked tokens; those rows are identical,
      discarded, and (deep in SmolLM2) of 7x the norm of real rows, so they dominated the recorded Hessians (96 of 128
      rows for a short prompt). Activation statistics of a call with an ``attention_mask`` keep only its real rows.
    """
    from ai_edge_quantizer.algorithms.uniform_quantize import common_quantize, gptq
    from ai_edge_quantizer.utils import tfl_interpreter_utils

    invoke = tfl_interpreter_utils.invoke_interpreter_signature
    collect = common_quantize.collect_activation_tensor_statistics
    inverse = gptq._prepare_hessian_inverse
    padding: dict[str, int] = {}

    def invoke_noting_padding(interpreter: Any, data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        padding.clear()
        ids, mask = data.get("input_ids"), data.get("attention_mask")
        if ids is not None and mask is not None and np.ndim(ids) == 2:
            length = np.shape(ids)[1]
            padding.update(rows=length, pad=length - int(np.asarray(mask)[0, -length:].sum()))
        return invoke(interpreter, data, *args, **kwargs)

    def collect_real_rows(tensor_idx: int, graph_info: Any, contents: Any, *args: Any, **kwargs: Any) -> Any:
        result = collect(tensor_idx, graph_info, contents, *args, **kwargs)
        if result is None or not padding.get("pad"):
            return result
        name, content, _ = result
        if content.ndim < 2 or content.shape[-2] != padding["rows"]:
            return result
        return collect(tensor_idx, graph_info, {name: content[..., padding["pad"]:, :]}, *args, **kwargs)

    def upper_cholesky_of_inverse(hessian: np.ndarray, damp_factor: float = 0.01) -> np.ndarray:
        factor = np.linalg.cholesky(inverse(hessian, damp_factor).astype(np.float64)).T
        return np.ascontiguousarray(factor, dtype=hessian.dtype)

    tfl_interpreter_utils.invoke_interpreter_signature = invoke_noting_padding
    common_quantize.collect_activation_tensor_statistics = collect_real_rows
    gptq._prepare_hessian_inverse = upper_cholesky_of_inverse
    try:
        yield
    finally:
        tfl_interpreter_utils.invoke_interpreter_signature = invoke
        common_quantize.collect_activation_tensor_statistics = collect
        gptq._prepare_hessian_inverse = inverse


def quantize_tflite(source: Path, target: Path, spec: QuantSpec, component: str,
                    calibration: dict[str, list[dict[str, np.ndarray]]] | None = None) -> None:
    """``calibration`` (signature name -> recorded static feeds, see ``SignatureFeedRecorder``) feeds
    ai-edge-quantizer's GPTQ when ``spec.gptq``."""
    if spec.gptq and not calibration:
        raise QuantizationError(f"GPTQ was asked for {component} but no calibration feeds were given for it",
                                "record feeds through the fp32 LiteRT bundle (SignatureFeedRecorder)")
    if spec.method == "fp32":
        shutil.copyfile(source, target)
        return
    from ai_edge_quantizer import quantizer

    try:
        with quiet_tool(), gptq_corrections():
            engine = quantizer.Quantizer(str(source))
            # the quantizer's own parsed copy of the model (a second parse of a 2B model would double its memory)
            edges = edge_weight_scopes(engine._float_model) if spec.method == "int4" else None
            engine.load_quantization_recipe(tflite_recipe(spec, edges))
            result = engine.calibrate(calibration, num_threads=os.cpu_count() or 1) if spec.gptq else None
            engine.quantize(result).export_model(str(target), overwrite=True)
    except Exception as exc:  # ai-edge-quantizer validates recipes and ops with its own error types
        raise QuantizationError(f"ai-edge-quantizer could not apply {spec.method} to {source.name}: "
                                f"{str(exc).splitlines()[0][:300]}", "try fp16 or int8 for this component") from exc


def quant_record(spec: QuantSpec) -> dict[str, Any]:
    if spec.method == "fp32":
        return {"method": "fp32", "weights": "float32", "activations": "float32"}
    if spec.method == "fp16":
        return {"method": "fp16", "weights": "float16 (dequantized to float32 at load)", "activations": "float32"}
    if spec.method == "int8":
        return {"method": "int8", "weights": "int8 per-channel symmetric (ai-edge-quantizer dynamic range)",
                "activations": "int8 dynamic (quantized at run time by the kernel)", "embedding_bits": 8}
    rounding = "GPTQ-calibrated (corrected, see gptq_corrections)" if spec.gptq else "min-max scales"
    edges = [name for name, bits in (("first", spec.first_layer_bits), ("last", spec.last_layer_bits)) if bits == 8]
    kept = f"the FULLY_CONNECTED weights reading the input of the {' and of the '.join(edges)} one, " if edges else ""
    return {"method": "int4", "weights": f"int4 block-wise symmetric, {rounding}, block {spec.block_size} "
                                         "(FULLY_CONNECTED); "
                                         f"int8 per-channel elsewhere ({kept}LM head, embedding tables, convolutions)",
            "activations": "int8 dynamic (quantized at run time by the kernel)", "block_size": spec.block_size,
            "gptq": spec.gptq, "embedding_bits": 8, "first_layer_bits": spec.first_layer_bits,
            "last_layer_bits": spec.last_layer_bits}


def component_record(component: ComponentDef, config: Any, path: Path, spec: QuantSpec,
                     examples: dict[str, dict[str, Any]], shapes: StaticShapes, image_token_id: int | None) -> dict:
    inputs, outputs = component.signature(config)
    first = next(iter(examples.values()))
    static: dict[str, Any] = {"signatures": {name: {k: list(v.shape) for k, v in feeds.items()}
                                             for name, feeds in examples.items()}}
    if component.name == "text_decoder":
        static.update(prefill_length=shapes.prefill_length, kv_capacity=shapes.kv_capacity,
                      image_token_id=image_token_id)
    else:
        static["loop_inputs"] = [t.name for t in inputs if t.shape and t.shape[0] in LOOP_DIMS
                                 and first[t.name].shape[0] == 1]
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "format": "tflite",
            "inputs": [t.to_json() for t in inputs], "outputs": [t.to_json() for t in outputs],
            "quantization": quant_record(spec), "static": static}
