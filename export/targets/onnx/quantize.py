"""ONNX quantization: pure functions from an fp32 ONNX file to a quantized one, per ``QuantSpec``.

- ``fp16``: weights and compute in float16, float32 graph inputs/outputs kept for the runtime.
- ``int8``: encoders get ONNX Runtime dynamic quantization (MatMul weights int8 per channel, activations quantized
  per tensor at run time, Gather tables int8); ``text_decoder`` gets weight-only int8 (MatMulNBits, 8 bits, block
  32), since per-tensor activation quantization loses accuracy on decoder activation outliers and decode is
  memory-bound anyway (``int8_weight_only`` overrides).
- ``int4``: MatMulNBits, weight-only, block-wise (block 32 by default) with error-minimising scales
  (``quant/blockwise.py``), symmetric by default or with per-block zero points (``symmetric=False``); ``gptq=True``
  replaces round-to-nearest by GPTQ (``quant/gptq.py``) on Hessians collected through the fp32 graph.
- A tied embedding / LM-head table becomes one 8-bit block-quantized initializer read by both GatherBlockQuantized
  and MatMulNBits (int8 and int4), so it is stored once.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.targets.onnx.nbits import matmuls_to_nbits, quantize_tied_table
from pocketvlm.runtime.errors import QuantizationError

# ORT's quantizer types every tensor by shape inference, which cannot see through ORT's own fused ops (e.g. the
# SimplifiedLayerNormalization the exporter fuses RMSNorm into): their outputs are float32 in every graph here
FLOAT = 1  # onnx.TensorProto.FLOAT

PROTOBUF_LIMIT = 1_900_000_000  # protobuf refuses messages over 2 GiB; keep a margin


def external_data_path(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def save_onnx(model: Any, path: Path) -> None:
    """Save, moving the weights to ``<name>.onnx.data`` beside the graph when they would pass the protobuf limit."""
    import onnx

    weights = sum(len(init.raw_data) for init in model.graph.initializer)
    if weights < PROTOBUF_LIMIT:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=external_data_path(path).name, size_threshold=1024)


def _strip_value_info(model: Any) -> None:
    # dynamo exports carry value_info that ORT's quantizer's shape inference chokes on
    del model.graph.value_info[:]


def quantize_file(src: Path, dst: Path, spec: QuantSpec, hessians: dict[str, Any] | None = None) -> None:
    """Write ``src`` (fp32 ONNX) to ``dst`` quantized per ``spec``. Pure: ``src`` is left untouched. ``hessians``
    (from ``gptq.collect_hessians`` on ``src``) are required when ``spec.gptq`` is set.

    Weight-only methods (int4, and int8 on ``text_decoder``) stream: the graph is loaded without its external weights
    and each weight is read from disk, quantized and dropped, so peak memory is the quantized bundle plus one fp32
    weight (a full-size Qwen2-VL-2B never has its fp32 weights in memory here)."""
    import onnx

    if spec.gptq and hessians is None:
        raise QuantizationError(f"GPTQ was asked for {src.stem} but no calibration data was given",
                                "pass calibration feeds to export_bundles(calibration=...), or drop gptq")
    if spec.method == "fp32":
        data = external_data_path(src)
        if data.exists() and data.stat().st_size >= PROTOBUF_LIMIT:
            shutil.copyfile(src, dst)  # the graph names its data file "<name>.onnx.data": same name beside dst
            shutil.copyfile(data, external_data_path(dst))
        elif data.exists():
            save_onnx(onnx.load(str(src)), dst)  # small: one self-contained file
        else:
            shutil.copyfile(src, dst)
        return
    streaming = spec.method == "int4" or (spec.method == "int8" and bool(spec.int8_weight_only))
    model = onnx.load(str(src), load_external_data=not streaming)
    _strip_value_info(model)
    with _quiet_root_logger():
        _quantize(model, dst, spec, hessians if spec.gptq else None, src.parent)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's quantizers log per-tensor INFO/WARNING lines on the root logger; keep the user's terminal readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize(model: Any, dst: Path, spec: QuantSpec, hessians: dict[str, Any] | None, base_dir: Path) -> None:
    """``base_dir``: where the weights of a graph loaded without its external data are read from."""
    if spec.method == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        save_onnx(model, dst)
        return
    from onnx.external_data_helper import load_external_data_for_model

    # A tied embedding / LM-head table stays one 8-bit initializer shared by both ops (embedding_bits).
    quantize_tied_table(model, block_size=spec.block_size, bits=spec.embedding_bits,
                        accuracy_level=spec.accuracy_level or 0, base_dir=base_dir)
    if spec.method == "int8" and not spec.int8_weight_only:
        _int8_dynamic(model, dst)
        return
    bits = 8 if spec.method == "int8" else 4
    widths = {"first_bits": spec.first_layer_bits, "last_bits": spec.last_layer_bits} if bits == 4 else {}
    matmuls_to_nbits(model, block_size=spec.block_size, bits=bits, accuracy_level=spec.accuracy_level or 0,
                     symmetric=spec.symmetric, hessians=hessians, base_dir=base_dir, **widths)
    load_external_data_for_model(model, str(base_dir))  # what is left: norms, biases, untied tables
    if _gathered_tables(model):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # 8-bit embedding tables (Gather) on top of the weight-only MatMuls
        quantize_dynamic(model, str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"],
                         per_channel=True, extra_options={"DefaultTensorType": FLOAT})
    else:
        save_onnx(model, dst)


def _gathered_tables(model: Any) -> list[str]:
    """Float embedding tables read by Gather (index-shape Gathers on small int tensors do not count): ORT's quantizer
    copies the whole model, so it runs only when there is a table for it to quantize."""
    import onnx

    tables = {init.name for init in model.graph.initializer
              if len(init.dims) == 2 and init.data_type == onnx.TensorProto.FLOAT}
    return [n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables]


def _int8_dynamic(model: Any, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(model, str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"],
                     per_channel=True, extra_options={"MatMulConstBOnly": True, "DefaultTensorType": FLOAT})


def _nbits_activations(spec: QuantSpec) -> str:
    return ("int8 per block, dynamic (MatMulNBits accuracy_level 4)" if spec.accuracy_level == 4
            else f"float32 (MatMulNBits accuracy_level {spec.accuracy_level})")

def quant_record(spec: QuantSpec) -> dict[str, Any]:
    """The manifest's per-component ``quantization`` block."""
    if spec.method == "fp32":
        return {"method": "fp32", "weights": "float32", "activations": "float32"}
    if spec.method == "fp16":
        return {"method": "fp16", "weights": "float16", "activations": "float16", "io": "float32"}
    if spec.method == "int8" and spec.int8_weight_only:
        return {"method": "int8", "weights": "int8 block-wise symmetric, MSE-searched scales (MatMulNBits)",
                "activations": _nbits_activations(spec), "accuracy_level": spec.accuracy_level,
                "op_types": ["MatMul", "Gemm", "Gather"], "block_size": spec.block_size,
                "symmetric": True, "embedding_bits": spec.embedding_bits}
    if spec.method == "int8":
        return {"method": "int8", "weights": "int8 per-channel (MatMul), int8 (Gather)",
                "activations": "uint8 dynamic per-tensor", "op_types": ["MatMul", "Gather"]}
    grid = "symmetric" if spec.symmetric else "asymmetric (uint8 zero points)"
    rounding = "GPTQ-calibrated" if spec.gptq else "MSE-searched scales"
    return {"method": "int4", "weights": f"int4 block-wise {grid}, {rounding} (MatMulNBits)",
            "activations": _nbits_activations(spec), "accuracy_level": spec.accuracy_level,
            "op_types": ["MatMul", "Gemm", "Gather"], "block_size": spec.block_size,
            "symmetric": spec.symmetric, "gptq": spec.gptq, "embedding_bits": spec.embedding_bits,
            "first_layer_bits": spec.first_layer_bits, "last_layer_bits": spec.last_layer_bits}
