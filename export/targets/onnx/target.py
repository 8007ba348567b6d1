"""The ONNX target: fp32 graphs with declared-dynamic shapes (``torch.onnx.export(dynamo=True)``), quantized per
bundle with ONNX Runtime's quantizers and pocketvlm's MatMulNBits rewriting; GPTQ Hessians come from the fp32 graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.spec import ComponentDef
from pocketvlm.export.targets.base import Capabilities, ExportContext, ExportOptions
from pocketvlm.export.targets.onnx.calibrate import graph_hessians
from pocketvlm.export.targets.onnx.convert import export_component
from pocketvlm.export.targets.onnx.quantize import external_data_path, quant_record, quantize_file
from pocketvlm.runtime.errors import ExportError
from pocketvlm.runtime.manifest import sha256_file

INT4_KNOBS = ("block_size", "symmetric", "gptq", "accuracy_level", "first_layer_bits", "last_layer_bits")


class OnnxTarget:
    name, title, precision, suffix = "onnx", "ONNX", "fp32", ".onnx"
    capabilities: Capabilities = {
        "fp32": {},
        "fp16": {},
        "int8": {"int8_weight_only": None, "accuracy_level": None, "block_size": None},
        "int4": dict.fromkeys(INT4_KNOBS),
    }
    calibrates_on_model, splits_vision = False, True
    mediapipe_variants = False

    def check(self, spec: QuantSpec, component: str, options: ExportOptions) -> None:
        return None

    def prepare(self, ctx: ExportContext) -> None:
        return None

    def convert(self, ctx: ExportContext, component: ComponentDef) -> None:
        export_component(ctx.model, component, ctx.scratch / f"{component.name}{self.suffix}")

    def calibrate(self, ctx: ExportContext, component: ComponentDef, feeds: Any) -> Any:
        return graph_hessians(ctx.scratch / f"{component.name}{self.suffix}", feeds)

    def quantize(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, dest: Path,
                 stats: Any) -> dict[str, Any]:
        quantize_file(ctx.scratch / f"{component.name}{self.suffix}", dest, spec, stats)
        return {}

    def predictor(self) -> Any:
        return None  # the runtime's own session

    def describe(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, path: Path, index: int,
                 done: dict[str, Any]) -> dict[str, Any]:
        import onnx

        name = component.name
        inputs, outputs = component.signature(ctx.config)
        model = onnx.load(str(path), load_external_data=False)  # parsed once: a 2B decoder's graph is over 1 GB
        got = [i.name for i in model.graph.input]
        if got != [t.name for t in inputs]:
            raise ExportError(f"{name}: exported graph inputs {got} differ from the declared "
                              f"{[t.name for t in inputs]}", "fix the family's component signature")
        data = external_data_path(path)
        return {
            "file": path.name,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "format": "onnx",
            "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "inputs": [t.to_json() for t in inputs],
            "outputs": [t.to_json() for t in outputs],
            "quantization": quant_record(spec),
            **({"external_data": data.name} if data.exists() else {}),
        }
