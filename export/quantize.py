"""Quantization as a typed config plus pure functions over ONNX files.

``QuantConfig`` holds one ``QuantSpec`` per component (a default plus overrides), parsed from the CLI
(``int8`` or ``int8,text_encoder=int4``) or a JSON file, and is recorded in the manifest.

- ``fp16``: weights and compute in float16, float32 graph inputs/outputs kept for the runtime.
- ``int8``: encoders get ONNX Runtime dynamic quantization (MatMul weights int8 per channel, activations quantized
  per tensor at run time, Gather tables int8); ``text_decoder`` gets weight-only int8 (MatMulNBits, 8 bits, block
  32), since per-tensor activation quantization loses accuracy on decoder activation outliers and decode is
  memory-bound anyway (``int8_weight_only`` overrides).
- ``int4``: MatMulNBits, weight-only, block-wise (block 32 by default) with error-minimising scales
  (``export/int4.py``), symmetric by default or with per-block zero points (``symmetric=False``). The first and last
  weight layers of each graph stay 8-bit (``first_layer_bits``, ``last_layer_bits``; on the medium random SigLIP the
  first alone lifts the worst-photo image cosine from 0.977 to 0.983 for +2.5% bytes), and embedding tables stay
  8-bit (4-bit embedding tables measured cosine 0.90-0.96 on other targets). ``gptq=True`` replaces round-to-nearest
  by GPTQ (``export/gptq.py``) for the MatMulNBits layers; it needs calibration feeds for the component. On the shapes
  captioner (the real SmolLM2-135M decoder) round-to-nearest int4 captions 12.5% of 48 test images right and GPTQ
  91.7%, the same as fp32 and int8 on those images.
- A tied embedding / LM-head table becomes one 8-bit block-quantized initializer read by both GatherBlockQuantized
  and MatMulNBits (int8 and int4), so it is stored once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pocketvlm.runtime.errors import QuantizationError

METHODS = ("fp32", "fp16", "int8", "int4", "palette4")  # palette4: Core ML only


@dataclass(frozen=True)
class QuantSpec:
    method: str = "fp32"
    block_size: int = 32
    embedding_bits: int = 8
    first_layer_bits: int = 8
    last_layer_bits: int = 8
    # int8 weights with float activations (MatMulNBits, 8 bits) instead of dynamic W8A8. None: by component, on for
    # text_decoder (memory-bound decode; activation outliers make per-tensor dynamic W8A8 lose accuracy), off for
    # encoders (compute-bound; integer kernels pay off).
    int8_weight_only: bool | None = None
    # MatMulNBits accuracy_level: 0 computes in float32 from dequantized weights; 4 quantizes activations to int8 per
    # block and runs ORT's integer kernels. None: by component, 4 for text_decoder (measured on SmolLM2-135M here:
    # an int8 decode step 511 ms at level 0 against 21 ms at level 4; fp32 is 51 ms), 0 elsewhere.
    accuracy_level: int | None = None
    # 4-bit weights with a zero point per block (uint8; same kernels and speed) instead of a grid centred on zero.
    symmetric: bool = True
    # GPTQ error compensation from calibration data (``export/gptq.py``) instead of round-to-nearest, for the
    # MatMulNBits layers; needs calibration feeds for the component (``export_bundles(calibration=...)``).
    gptq: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizationError(f"unknown quantization '{self.method}'", f"use one of: {', '.join(METHODS)}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise QuantizationError(f"int4 block size {self.block_size} is not a power of two >= 16",
                                    "use 16, 32, 64 or 128")
        if self.embedding_bits != 8:
            raise QuantizationError(f"embedding_bits {self.embedding_bits} unsupported (4-bit tables measured cosine "
                                    "0.90-0.96 on other targets and are not offered for ONNX)", "use 8 (the default)")
        if self.accuracy_level not in (None, 0, 1, 2, 3, 4):
            raise QuantizationError(f"accuracy_level {self.accuracy_level} unsupported",
                                    "use 0 (float compute) or 4 (int8 compute); 1-3 are fp32/fp16/bf16")
        if (self.gptq or not self.symmetric) and self.method != "int4":
            raise QuantizationError(f"gptq and asymmetric grids apply to int4 only, not to {self.method}",
                                    "drop gptq / symmetric from this component's spec, or use int4")
        for name in ("first_layer_bits", "last_layer_bits"):
            if getattr(self, name) not in (4, 8):
                raise QuantizationError(f"{name} {getattr(self, name)} unsupported", "use 8 (default) or 4")

    def resolved(self, component: str) -> QuantSpec:
        spec = self
        if spec.int8_weight_only is None:
            spec = replace(spec, int8_weight_only=component == "text_decoder")
        if spec.accuracy_level is None:
            spec = replace(spec, accuracy_level=4 if component == "text_decoder" else 0)
        return spec

    def nbits_activations(self) -> str:
        return ("int8 per block, dynamic (MatMulNBits accuracy_level 4)" if self.accuracy_level == 4
                else f"float32 (MatMulNBits accuracy_level {self.accuracy_level})")

    def record(self) -> dict[str, Any]:
        """The manifest's per-component ``quantization`` block."""
        if self.method == "fp32":
            return {"method": "fp32", "weights": "float32", "activations": "float32"}
        if self.method == "fp16":
            return {"method": "fp16", "weights": "float16", "activations": "float16", "io": "float32"}
        if self.method == "int8" and self.int8_weight_only:
            return {"method": "int8", "weights": "int8 block-wise symmetric, MSE-searched scales (MatMulNBits)",
                    "activations": self.nbits_activations(), "accuracy_level": self.accuracy_level,
                    "op_types": ["MatMul", "Gemm", "Gather"], "block_size": self.block_size,
                    "symmetric": True, "embedding_bits": self.embedding_bits}
        if self.method == "int8":
            return {"method": "int8", "weights": "int8 per-channel (MatMul), int8 (Gather)",
                    "activations": "uint8 dynamic per-tensor", "op_types": ["MatMul", "Gather"]}
        grid = "symmetric" if self.symmetric else "asymmetric (uint8 zero points)"
        rounding = "GPTQ-calibrated" if self.gptq else "MSE-searched scales"
        return {"method": "int4", "weights": f"int4 block-wise {grid}, {rounding} (MatMulNBits)",
                "activations": self.nbits_activations(), "accuracy_level": self.accuracy_level,
                "op_types": ["MatMul", "Gemm", "Gather"], "block_size": self.block_size,
                "symmetric": self.symmetric, "gptq": self.gptq, "embedding_bits": self.embedding_bits,
                "first_layer_bits": self.first_layer_bits, "last_layer_bits": self.last_layer_bits}


@dataclass(frozen=True)
class QuantConfig:
    default: QuantSpec = QuantSpec()
    components: dict[str, QuantSpec] = field(default_factory=dict)

    def for_component(self, name: str) -> QuantSpec:
        return self.components.get(name, self.default).resolved(name)

    def to_json(self) -> dict[str, Any]:
        return {"default": asdict(self.default), "components": {k: asdict(v) for k, v in self.components.items()}}

    @classmethod
    def parse(cls, text: str) -> QuantConfig:
        """``int8`` | ``int8,text_encoder=int4`` | path to a JSON file written by ``to_json``."""
        path = Path(text)
        if text.endswith(".json"):
            if not path.is_file():
                raise QuantizationError(f"quantization config file not found: {text}", "check the path")
            try:
                data = json.loads(path.read_text())
                return cls(QuantSpec(**data.get("default", {})),
                           {k: QuantSpec(**v) for k, v in data.get("components", {}).items()})
            except (json.JSONDecodeError, TypeError) as exc:
                raise QuantizationError(f"invalid quantization config {text}: {exc}",
                                        'write {"default": {"method": "int8"}, "components": {...}}') from exc
        default, overrides = QuantSpec(), {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" in part:
                name, method = (s.strip() for s in part.split("=", 1))
                overrides[name] = replace(QuantSpec(), method=method)
            else:
                default = QuantSpec(method=part)
        return cls(default, {k: replace(default, method=v.method) for k, v in overrides.items()})

    @property
    def uses_gptq(self) -> bool:
        return any(spec.gptq for spec in (self.default, *self.components.values()))

    def gptq_components(self, names: tuple[str, ...]) -> set[str]:
        """Those of ``names`` quantized with GPTQ (int4 only, checked by QuantSpec): they need calibration feeds."""
        return {name for name in names if self.for_component(name).gptq}

    def check_components(self, names: tuple[str, ...]) -> None:
        unknown = sorted(set(self.components) - set(names))
        if unknown:
            raise QuantizationError(f"quantization names unknown component(s) {', '.join(unknown)}",
                                    f"use component names of this family: {', '.join(names)}")


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

    from pocketvlm.export.int4 import matmuls_to_nbits, quantize_tied_table

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
