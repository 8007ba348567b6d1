"""The LiteRT target: one fp32 ``.tflite`` per component (litert-torch) at static shapes, quantized per bundle with
ai-edge-quantizer; GPTQ runs inside ai-edge-quantizer on feeds recorded per signature through an fp32 bundle.
``--mediapipe`` adds a MediaPipe Tasks variant of a CLIP / SigLIP image tower (``tflite/mediapipe.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.spec import ComponentDef
from pocketvlm.export.static_shapes import prepare_static_bundles, static_examples
from pocketvlm.export.targets.base import Capabilities, ExportContext, ExportOptions
from pocketvlm.export.targets.tflite import mediapipe
from pocketvlm.export.targets.tflite.convert import convert_component
from pocketvlm.export.targets.tflite.quantize import BLOCK_SIZES, component_record, quantize_tflite
from pocketvlm.runtime.image import ImagePreprocess


class TFLiteTarget:
    name, title, precision, suffix = "tflite", "LiteRT", "fp32", ".tflite"
    capabilities: Capabilities = {
        "fp32": {},
        "fp16": {},
        "int8": {},
        "int4": {"block_size": BLOCK_SIZES, "gptq": None, "first_layer_bits": None, "last_layer_bits": None},
    }
    calibrates_on_model, splits_vision, mediapipe_variants = False, True, True

    def check(self, spec: QuantSpec, component: str, options: ExportOptions) -> None:
        if options.mediapipe:
            mediapipe.check_request(options.mediapipe, options.mediapipe_scale, component, spec.gptq)

    def prepare(self, ctx: ExportContext) -> None:
        prepare_static_bundles(ctx.metadata, ctx.options.shapes, ctx.config)
        if ctx.options.mediapipe:  # the checkpoint's preprocessing refused here, before anything is converted
            preprocess = ImagePreprocess.from_json(ctx.metadata[0]["preprocessing"]["image"])
            ctx.state[mediapipe.FILE] = preprocess, mediapipe.variant_scale(ctx.options.mediapipe_scale, preprocess,
                                                                            ctx.config)

    def convert(self, ctx: ExportContext, component: ComponentDef) -> None:
        examples = static_examples(component, ctx.config, ctx.metadata[0], ctx.options.shapes)
        ctx.state[component.name] = examples
        convert_component(ctx.model, component, ctx.scratch / f"{component.name}{self.suffix}", examples)
        if component.name in ctx.options.mediapipe:
            mediapipe.convert_variant(ctx.model, component, *ctx.state[mediapipe.FILE], ctx.scratch / mediapipe.FILE)

    def calibrate(self, ctx: ExportContext, component: ComponentDef, feeds: Any) -> Any:
        return feeds  # signature name -> static feeds: ai-edge-quantizer collects its own Hessians from them

    def quantize(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, dest: Path,
                 stats: Any) -> dict[str, Any]:
        quantize_tflite(ctx.scratch / f"{component.name}{self.suffix}", dest, spec, component.name, stats)
        if component.name not in ctx.options.mediapipe:
            return {}
        output = component.signature(ctx.config)[1][0]
        return {"mediapipe": mediapipe.write_variant(ctx.scratch / mediapipe.FILE, dest.with_name(mediapipe.FILE),
                                                     spec, *ctx.state[mediapipe.FILE], ctx.family.name, output)}

    def predictor(self) -> Any:
        return None  # the runtime's own session

    def describe(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, path: Path, index: int,
                 done: dict[str, Any]) -> dict[str, Any]:
        image_token = (ctx.metadata[index].get("special_tokens") or {}).get("image_token_id")
        record = component_record(component, ctx.config, path, spec, ctx.state[component.name], ctx.options.shapes,
                                  image_token)
        return {**record, **done}  # done: the MediaPipe variant's record, where one was written
