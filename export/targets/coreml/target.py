"""The Core ML target: one fp16 ``.mlpackage`` per component (each converted in its own process when ``isolate``),
then weight compression per bundle. The ``text_decoder`` is a stateful multifunction package (``decoder.py``): its
functions are converted and compressed one by one, then merged, so identical weights are stored once. GPTQ Hessians
come from hooks on the torch export wrapper, before the model is released; pocketvlm's GPTQ codes and scales are then
written over coremltools' round-to-nearest int4 ones (``gptq.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.spec import ComponentDef
from pocketvlm.export.static_shapes import LOOP_DIMS, prepare_static_bundles, static_examples
from pocketvlm.export.targets.base import Capabilities, ExportContext, ExportOptions
from pocketvlm.export.targets.coreml import decoder, gptq
from pocketvlm.export.targets.coreml.check import core_ml_predictor
from pocketvlm.export.targets.coreml.common import DEPLOYMENT_TARGETS, package_digest
from pocketvlm.export.targets.coreml.compress import compress_package, quant_record
from pocketvlm.export.targets.coreml.convert import convert_component
from pocketvlm.export.targets.coreml.isolate import compress_isolated, convert_isolated
from pocketvlm.runtime.errors import ExportError, QuantizationError

DECODER = "text_decoder"
EDGES = {"first_layer_bits": None, "last_layer_bits": None}


class CoreMLTarget:
    name, title, precision, suffix = "coreml", "Core ML", "fp16", ".mlpackage"
    capabilities: Capabilities = {
        "fp16": {},
        "int8": {},
        "int4": {"block_size": None, "gptq": None, **EDGES},
        "palette4": dict(EDGES),
    }
    calibrates_on_model, splits_vision = True, True
    mediapipe_variants = False

    def check(self, spec: QuantSpec, component: str, options: ExportOptions) -> None:
        target = options.deployment_target
        if target not in DEPLOYMENT_TARGETS:
            raise QuantizationError(f"unknown deployment target '{target}'",
                                    f"use one of {', '.join(DEPLOYMENT_TARGETS)}")
        if spec.method in ("int4", "palette4") and target != "iOS18":
            kind = "int4 (per-block) weights need" if spec.method == "int4" else "grouped palette4 needs"
            raise QuantizationError(f"{kind} iOS 18; the deployment target is {target}",
                                    "use --deployment-target iOS18, or int8 for older iOS")
        if component == DECODER and target != "iOS18":
            raise ExportError(f"the Core ML text_decoder keeps its KV cache in states, which need iOS 18 (the "
                              f"deployment target is {target})", "use --deployment-target iOS18")

    def prepare(self, ctx: ExportContext) -> None:
        prepare_static_bundles(ctx.metadata, ctx.options.shapes, ctx.config)

    def convert(self, ctx: ExportContext, component: ComponentDef) -> None:
        options, shapes = ctx.options, ctx.options.shapes
        if component.name == DECODER:
            ctx.state[DECODER] = {name: decoder.decoder_feeds(component, ctx.config, length, shapes.kv_capacity)
                                  for name, length in zip(decoder.function_names(shapes.prefill_length),
                                                          (shapes.prefill_length, 1), strict=True)}
        else:
            examples = static_examples(component, ctx.config, ctx.metadata[0], shapes)
            ctx.state[component.name] = next(iter(examples.values()))
        if options.isolate and ctx.model is not None:
            ctx.release_model()  # each child loads its own copy: peak memory is one component's conversion
        if component.name == DECODER:
            if ctx.model is None:
                convert_isolated(ctx.checkpoint.path, ctx.family.name, DECODER, ctx.scratch, {},
                                 options.deployment_target,
                                 {"prefill_length": shapes.prefill_length, "capacity": shapes.kv_capacity})
            else:
                decoder.convert_decoder(ctx.model, component, ctx.scratch, shapes.prefill_length, shapes.kv_capacity,
                                        options.deployment_target)
            return
        path, feeds = ctx.scratch / f"{component.name}{self.suffix}", ctx.state[component.name]
        if ctx.model is None:
            convert_isolated(ctx.checkpoint.path, ctx.family.name, component.name, path, feeds,
                             options.deployment_target)
        else:
            convert_component(ctx.model, component, path, feeds, options.deployment_target)

    def calibrate(self, ctx: ExportContext, component: ComponentDef, feeds: Any) -> Any:
        return gptq.calibrate(ctx.model, component, feeds)

    def quantize(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, dest: Path,
                 stats: Any) -> dict[str, Any]:
        if component.name != DECODER:
            done = self._compress(ctx.scratch / f"{component.name}{self.suffix}", dest, spec, ctx.options.isolate)
            _apply_gptq(dest, stats, spec)
            return done
        # coremltools compresses single-function packages only: each function, then one merged package
        parts: dict[str, Path] = {}
        done: dict[str, Any] = {}
        try:
            for name in ctx.state[DECODER]:
                parts[name] = dest.with_name(f".{name}.{dest.name}")
                done = self._compress(ctx.scratch / f"{DECODER}.{name}{self.suffix}", parts[name], spec,
                                      ctx.options.isolate)
                _apply_gptq(parts[name], stats, spec)
            decoder.merge_functions(parts, dest)
        finally:
            for part in parts.values():
                shutil.rmtree(part, ignore_errors=True)
        return done

    def predictor(self) -> Any:
        """Core ML itself on macOS; elsewhere the reference evaluator, which computes as Core ML's fp16 CPU path."""
        return core_ml_predictor()

    def describe(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, path: Path, index: int,
                 done: dict[str, Any]) -> dict[str, Any]:
        inputs, outputs = component.signature(ctx.config)
        digest, size = package_digest(path)
        coreml = {"deployment_target": ctx.options.deployment_target, "compute_precision": "float16",
                  "program": "mlprogram"}
        record = {"file": path.name, "sha256": digest, "bytes": size, "format": "mlpackage",
                  "inputs": [t.to_json() for t in inputs], "outputs": [t.to_json() for t in outputs],
                  "quantization": quant_record(spec, done)}
        if component.name == DECODER:
            shapes, functions = ctx.options.shapes, ctx.state[DECODER]
            image_token = (ctx.metadata[index].get("special_tokens") or {}).get("image_token_id")
            return {**record, "inputs": [t.to_json() for t in decoder.decoder_inputs(component, ctx.config)],
                    "outputs": [outputs[0].to_json()],
                    "static": decoder.decoder_static(functions, shapes.kv_capacity, shapes.prefill_length,
                                                     image_token),
                    "coreml": {**coreml, "functions": list(functions), "states": list(decoder.STATES)}}
        feeds = ctx.state[component.name]
        dtypes = {t.name: "int32" if str(feeds[t.name].dtype) in ("torch.int64", "torch.int32") else "float32"
                  for t in inputs}
        static = {"signatures": {component.name: {k: list(v.shape) for k, v in feeds.items()}}, "dtypes": dtypes,
                  "loop_inputs": [t.name for t in inputs if t.shape and t.shape[0] in LOOP_DIMS
                                  and feeds[t.name].shape[0] == 1]}
        return {**record, "static": static, "coreml": coreml}

    @staticmethod
    def _compress(source: Path, dest: Path, spec: QuantSpec, isolate: bool) -> dict[str, Any]:
        if isolate:
            return compress_isolated(source, dest, spec)
        with decoder.without_broken_state_pass():  # only stateful programs need it; harmless elsewhere
            return compress_package(source, dest, spec)


def _apply_gptq(package: Path, rewrite: dict[str, Any] | None, spec: QuantSpec) -> None:
    if rewrite is None:
        return
    done = gptq.rewrite_int4(package, rewrite["weights"], rewrite["hessians"], spec.block_size)
    if not done:
        raise QuantizationError(f"GPTQ found no int4 weight to rewrite in {package.name}",
                                "check that the component has Linear layers above coremltools' size threshold")
