"""Quantization as a typed config: one ``QuantSpec`` per component, for every target.

``QuantConfig`` holds one ``QuantSpec`` per component (a default plus overrides), parsed from the CLI
(``int8`` or ``int8,text_encoder=int4``) or a JSON file, and is recorded in the manifest. Which methods and knobs
each target accepts is the capability table in ``export/targets/capabilities.py``, checked before anything is
written; what each method does on a target is that target's ``quantize`` module. Under 4 bits the first and last
weight layers of each graph stay 8-bit (``first_layer_bits``, ``last_layer_bits``; on the medium random SigLIP the
first alone lifts the worst-photo image cosine from 0.977 to 0.983 for +2.5% bytes), and embedding tables stay 8-bit
(4-bit embedding tables measured cosine 0.90-0.96). ``gptq=True`` replaces round-to-nearest by GPTQ
(``quant/gptq.py``); it needs calibration feeds for the component. On the shapes captioner (the real SmolLM2-135M
decoder) round-to-nearest int4 captions 12.5% of 48 test images right and GPTQ 91.7%, the same as fp32 and int8.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pocketvlm.runtime.errors import QuantizationError

# palette4: Core ML only; a16w8 / a8w8 (static QDQ: 16- or 8-bit activations, 8-bit weights): QNN only
METHODS = ("fp32", "fp16", "int8", "int4", "palette4", "a16w8", "a8w8")


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


@dataclass(frozen=True)
class QuantConfig:
    default: QuantSpec = QuantSpec()
    components: dict[str, QuantSpec] = field(default_factory=dict)

    def for_component(self, name: str) -> QuantSpec:
        return self.requested(name).resolved(name)

    def requested(self, name: str) -> QuantSpec:
        """The spec as written, before per-component defaults: what the capability table is checked against."""
        return self.components.get(name, self.default)

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
