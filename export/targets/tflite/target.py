"""The LiteRT target: one fp32 ``.tflite`` per component (litert-torch) at static shapes, quantized per bundle with
ai-edge-quantizer; GPTQ runs inside ai-edge-quantizer on feeds recorded per signature through an fp32 bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.spec import ComponentDef
from pocketvlm.export.static_shapes import prepare_static_bundles, static_examples
from pocketvlm.export.targets.base import Capabilities, ExportContext, ExportOptions
from pocketvlm.export.targets.tflite.convert import convert_component
from pocketvlm.export.targets.tflite.quantize import BLOCK_SIZES, component_record, quantize_tflite


class TFLiteTarget:
    name, title, precision, suffix = "tflite", "LiteRT", "fp32", ".tflite"
    capabilities: Capabilities = {
        "fp32": {},
        "fp16": {},
        "int8": {},
        "int4": {"block_size": BLOCK_SIZES, "gptq": None, "first_layer_bits": None, "last_layer_bits": None},
    }
    calibrates_on_model, splits_vision = False, True

    def check(self, spec: QuantSpec, component: str, options: ExportOptions) -> None:
        return None

    def prepare(self, ctx: ExportContext) -> None:
        prepare_static_bundles(ctx.metadata, ctx.options.shapes, ctx.config)

    def convert(self, ctx: ExportContext, component: ComponentDef) -> None:
        examples = static_examples(component, ctx.config, ctx.metadata[0], ctx.options.shapes)
        ctx.state[component.name] = examples
        convert_component(ctx.model, component, ctx.scratch / f"{component.name}{self.suffix}", examples)

    def calibrate(self, ctx: ExportContext, component: ComponentDef, feeds: Any) -> Any:
        return feeds  # signature name -> static feeds: ai-edge-quantizer collects its own Hessians from them

    def quantize(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, dest: Path,
                 stats: Any) -> dict[str, Any]:
        quantize_tflite(ctx.scratch / f"{component.name}{self.suffix}", dest, spec, component.name, stats)
        return {}

    def predictor(self) -> Any:
        return None  # the runtime's own session

    def describe(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, path: Path, index: int,
                 done: dict[str, Any]) -> dict[str, Any]:
        image_token = (ctx.metadata[index].get("special_tokens") or {}).get("image_token_id")
        return component_record(component, ctx.config, path, spec, ctx.state[component.name], ctx.options.shapes,
                                image_token)
