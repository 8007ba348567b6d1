"""LiteRT (``.tflite``) export of one component with litert-torch, and its quantization with ai-edge-quantizer.

Phone delegates (GPU, NNAPI/NPU) want static shapes, so every signature here is static, batch 1:

- encoders: one signature named after the component; the runtime's ``LiteRTSession`` loops over rows of a larger
  batch (``batch``, ``tiles``). Text encoders take the tokenizer's ``max_length`` (the bundle pads to it).
- Qwen-family vision encoders: every image is resized to one ``image_size`` square grid (recorded in the manifest's
  preprocessing as ``fixed_size``); the example feeds come from the runtime's own preprocessing of such an image, so
  the grid-dependent inputs (positions, windows, interpolation taps) are exactly the ones the runtime will feed.
- ``text_decoder``: ``prefill_N`` and ``decode`` signatures sharing one set of weights, with a KV cache of
  ``kv_capacity`` slots as inputs and the new entries as outputs (the same contract as the ONNX graph).

The export-friendly wrappers are the families' own, shared with ONNX; grouped-query attention without
``repeat_kv`` (``rewrites.grouped_attention``) is used for decoders here too.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.quantize import QuantSpec
from pocketvlm.export.registry import ComponentDef, TensorDef
from pocketvlm.runtime.errors import ExportError, QuantizationError

LOOP_DIMS = ("batch", "tiles")  # axis-0 dims the runtime loops over at batch 1
LIGHTWEIGHT_ABOVE = 500_000_000  # parameters: litert-torch's lazy-constant conversion keeps a 2B model in memory
BLOCK_SIZES = (32, 64, 128, 256)  # what ai-edge-quantizer's blockwise granularity offers


@dataclass(frozen=True)
class StaticShapes:
    """The static shapes of a LiteRT bundle (``--shapes FILE``: a JSON object with any of these keys)."""

    prefill_length: int = 128
    kv_capacity: int = 1024
    image_size: int = 448

    def __post_init__(self) -> None:
        if self.prefill_length < 2:
            raise ExportError(f"prefill_length {self.prefill_length} is below 2 (decode already covers 1 token)",
                              "set prefill_length to 2 or more, e.g. 128")
        if self.kv_capacity < self.prefill_length:
            raise ExportError(f"kv_capacity {self.kv_capacity} is smaller than prefill_length {self.prefill_length}",
                              "raise kv_capacity or lower prefill_length")

    @classmethod
    def load(cls, path: Path | str | None) -> StaticShapes:
        if path is None:
            return cls()
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read static shapes from {path}: {exc}",
                              'pass a JSON file like {"prefill_length": 128, "kv_capacity": 1024}') from exc
        unknown = sorted(set(data) - set(asdict(cls())))
        if unknown:
            raise ExportError(f"unknown static-shape setting(s) {unknown} in {path}",
                              f"use only {sorted(asdict(cls()))}")
        return cls(**{k: int(v) for k, v in data.items()})


def prepare_metadata(metadata: dict[str, Any], shapes: StaticShapes, patch_multiple: int | None) -> None:
    """Bundle metadata edits a static-shape bundle needs: fixed image grid, tokenizer padded to max_length."""
    image = metadata.get("preprocessing", {}).get("image", {})
    if image.get("kind") == "qwen2_vl":
        if patch_multiple and shapes.image_size % patch_multiple:
            raise ExportError(f"image_size {shapes.image_size} is not a multiple of {patch_multiple} (patch x merge)",
                              f"use a multiple of {patch_multiple}, e.g. {patch_multiple * 16}")
        image["fixed_size"] = [shapes.image_size, shapes.image_size]
    if metadata.get("task") == "zero_shot_image_classification":
        metadata["tokenizer"]["padding"] = "max_length"


def _dims(tensor: TensorDef, sizes: dict[str, int]) -> list[int]:
    missing = [d for d in tensor.shape if isinstance(d, str) and d not in sizes]
    if missing:
        raise ExportError(f"{tensor.name}: no static size for dim(s) {missing}", "report the model config")
    return [sizes[d] if isinstance(d, str) else int(d) for d in tensor.shape]


def _synthetic(tensor: TensorDef, shape: list[int], seed: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    if tensor.name == "attention_mask":
        return torch.ones(shape, dtype=torch.int64)
    if tensor.name == "position_ids":
        return torch.arange(shape[-1]).expand(*shape).contiguous()
    if tensor.dtype == "int64":
        return torch.randint(0, 2, shape, generator=generator)
    return torch.randn(shape, generator=generator)


def decoder_examples(component: ComponentDef, config: Any, shapes: StaticShapes) -> dict[str, dict[str, Any]]:
    in_defs, _ = component.signature(config)
    examples = {}
    for name, new in ((f"prefill_{shapes.prefill_length}", shapes.prefill_length), ("decode", 1)):
        sizes = {"batch": 1, "sequence": new, "past": shapes.kv_capacity, "image_tokens": new,
                 "past_sequence": shapes.kv_capacity + new}
        examples[name] = {t.name: _synthetic(t, _dims(t, sizes), i) for i, t in enumerate(in_defs)}
    return examples


def vision_examples(component: ComponentDef, config: Any, metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The runtime's own feeds for a mid-grey image at the bundle's fixed size (one tile where it loops)."""
    import torch
    from PIL import Image

    from pocketvlm.runtime.vlm import ADAPTERS

    image_config = metadata["preprocessing"]["image"]
    adapter = ADAPTERS[image_config["kind"]](image_config, metadata["special_tokens"])
    side = image_config.get("fixed_size", [image_config.get("tile_size", 224)] * 2)
    feeds = adapter.vision_feeds(adapter.preprocess(Image.new("RGB", (side[1], side[0]), (128, 128, 128))))
    in_defs, _ = component.signature(config)
    example = {}
    for tensor in in_defs:
        value = torch.from_numpy(np.ascontiguousarray(feeds[tensor.name]))
        example[tensor.name] = value[:1] if tensor.shape and tensor.shape[0] in LOOP_DIMS else value
    return {component.name: example}


def encoder_examples(component: ComponentDef, config: Any, metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    in_defs, _ = component.signature(config)
    sizes = {"batch": 1, "tiles": 1, "sequence": int(metadata["tokenizer"]["max_length"])}
    return {component.name: {t.name: _synthetic(t, _dims(t, sizes), i) for i, t in enumerate(in_defs)}}


def static_examples(component: ComponentDef, config: Any, metadata: dict[str, Any],
                    shapes: StaticShapes) -> dict[str, dict[str, Any]]:
    """Signature name -> example feeds (static shapes) for one component."""
    if component.name == "text_decoder":
        return decoder_examples(component, config, shapes)
    if metadata.get("task") == "image_text_to_text":
        return vision_examples(component, config, metadata)
    return encoder_examples(component, config, metadata)


def _named(module: Any, in_defs: tuple[TensorDef, ...], out_defs: tuple[TensorDef, ...]) -> Any:
    """The wrapper with named keyword inputs and a dict of named outputs: the .tflite signatures carry the names."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
            outputs = self.inner(*[feeds[t.name] for t in in_defs])
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            return {t.name: value for t, value in zip(out_defs, outputs, strict=True)}

    return Named().eval()


@contextlib.contextmanager
def _quiet() -> Any:
    """litert-torch prints a progress line per stage and warns on every 64-bit input; keep the CLI's output ours."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def convert_component(model: Any, component: ComponentDef, path: Path, examples: dict[str, dict[str, Any]]) -> None:
    """fp32 ``.tflite`` with one signature per entry of ``examples``."""
    import torch

    from pocketvlm.export.rewrites import grouped_attention

    # the converter's C++ side logs to stderr below Python's reach; keep INFO lines out of the CLI's output
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        import litert_torch
    except ImportError as exc:
        raise ExportError("--target tflite needs litert-torch, which is not installed",
                          'pip install "pocketvlm[tflite]"') from exc
    in_defs, out_defs = component.signature(model.config)
    module = _named(component.wrap(model).eval(), in_defs, out_defs)
    attention = grouped_attention(model) if component.name == "text_decoder" else contextlib.nullcontext()
    params = sum(p.numel() for p in model.parameters())
    try:
        with _quiet(), torch.no_grad(), attention:
            converter = litert_torch.Converter()
            for name, feeds in examples.items():
                converter.signature(name, module, sample_kwargs=feeds)
            edge = converter.convert(lightweight_conversion=params > LIGHTWEIGHT_ABOVE)
            edge.export(str(path))
    except Exception as exc:  # litert-torch raises torch.export, MLIR and converter errors of many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"LiteRT conversion of {component.name} failed: {first[:300]}",
                          "report the model config; the ONNX target may support it (--target onnx)") from exc


def check_tflite_spec(spec: QuantSpec, component: str) -> None:
    """Settings the ONNX quantizer has and ai-edge-quantizer does not: refuse them by name, never ignore them."""
    defaults = QuantSpec(method=spec.method).resolved(component)
    for name in ("symmetric", "accuracy_level", "int8_weight_only"):
        if getattr(spec, name) != getattr(defaults, name):
            raise QuantizationError(f"quantization setting '{name}' is ONNX-only; the tflite target cannot apply it",
                                    f"drop '{name}' from the config for --target tflite")
    if spec.method == "int4" and spec.block_size not in BLOCK_SIZES:
        raise QuantizationError(f"int4 block size {spec.block_size} is not offered by ai-edge-quantizer",
                                f"use one of {BLOCK_SIZES} for --target tflite")


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
    check_tflite_spec(spec, component)
    if spec.gptq and not calibration:
        raise QuantizationError(f"GPTQ was asked for {component} but no calibration feeds were given for it",
                                "record feeds through the fp32 LiteRT bundle (SignatureFeedRecorder)")
    if spec.method == "fp32":
        shutil.copyfile(source, target)
        return
    from ai_edge_quantizer import quantizer

    try:
        with _quiet(), gptq_corrections():
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
    from pocketvlm.runtime.manifest import sha256_file

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


class SignatureFeedRecorder:
    """Stands in for a runtime ``LiteRTSession`` and keeps the static feeds of every signature call: run an fp32
    LiteRT bundle through the runtime on representative inputs with its sessions wrapped, and ``feeds`` (signature
    name -> feeds) is GPTQ calibration data for ai-edge-quantizer. ``every`` keeps one ``decode`` call in that many
    (each decode feed carries the whole KV buffer)."""

    def __init__(self, session: Any, every: int = 4) -> None:
        self.session = session
        self.input_names, self.output_names = session.input_names, session.output_names
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in session.runners}
        for name, runner in session.runners.items():
            session.runners[name] = _Recording(runner, self.feeds[name], every if name == "decode" else 1)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.session.run(feeds)


class _Recording:
    def __init__(self, runner: Any, store: list[dict[str, np.ndarray]], every: int) -> None:
        self.runner, self.store, self.every, self.calls = runner, store, every, 0
        self.inputs, self.name = runner.inputs, runner.name

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.calls % self.every == 0:
            self.store.append({k: np.array(feeds[k], dtype=dtype) for k, (_, dtype) in self.inputs.items()})
        self.calls += 1
        return self.runner(feeds)
