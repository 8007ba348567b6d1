"""checkpoint -> Core ML bundles (``pipeline.export_bundles(target="coreml")``): one fp16 ``.mlpackage`` per
component (each converted in its own process when ``isolate``), then weight compression per bundle. The
``text_decoder`` is a stateful multifunction package (``coreml_decoder``): its functions are converted and
compressed one by one, then merged, so identical weights are stored once."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path
from typing import Any

from pocketvlm.export.checkpoint import Checkpoint
from pocketvlm.export.quant.config import QuantConfig, QuantSpec
from pocketvlm.export.registry import ComponentDef, FamilySpec
from pocketvlm.export.static_shapes import StaticShapes, static_examples
from pocketvlm.export.targets.coreml import convert as coreml_export
from pocketvlm.export.targets.coreml import decoder as coreml_decoder
from pocketvlm.export.targets.coreml import gptq as coreml_gptq
from pocketvlm.runtime.errors import QuantizationError

DECODER = "text_decoder"


def export_coreml(checkpoint: Checkpoint, family: FamilySpec, components: tuple[ComponentDef, ...],
                  stagings: list[Path], quants: list[QuantConfig], say: Any, shapes: StaticShapes,
                  deployment_target: str, isolate: bool, calibration: Any = None) -> list[dict[str, Any]]:
    """``calibration``: component name -> feeds recorded through an fp32 bundle (``gptq.FeedRecorder``), for the
    components whose spec asks for GPTQ (``coreml_gptq``)."""
    from pocketvlm.export.loop import _manifest, _ticker, load_static

    calibrated = sorted(set().union(*(q.gptq_components(tuple(c.name for c in components)) for q in quants)))
    tick = _ticker(say, 2 + len(components) * (1 + len(stagings)) + len(calibrated))
    model, extras = load_static(checkpoint, family, stagings, shapes, tick)
    config = model.config
    gptq = {}
    for comp in (c for c in components if c.name in calibrated):
        tick(f"collecting GPTQ Hessians of {comp.name} on {len(calibration[comp.name])} calibration feeds")
        gptq[comp.name] = coreml_gptq.calibrate(model, comp, calibration[comp.name])
    feeds = {comp.name: next(iter(static_examples(comp, config, extras[0], shapes).values())) for comp in components
             if comp.name != DECODER}
    if isolate:  # each child loads its own copy: free this one first (peak memory is one component's conversion)
        del model
        gc.collect()
        model = None
    scratch = stagings[0].with_name(stagings[0].name + "-fp16")
    scratch.mkdir()
    try:
        for comp in components:
            tick(f"converting {comp.name} to Core ML (fp16{', own process' if isolate else ''})")
            _convert(model, checkpoint, family, comp, scratch, feeds.get(comp.name), shapes, deployment_target)
        manifests = []
        for staging, quant, extra in zip(stagings, quants, extras, strict=True):
            records = {}
            for comp in components:
                spec = quant.for_component(comp.name)
                tick(f"compressing {comp.name} ({spec.method}) into {staging.name.split('.partial-')[0][1:]}")
                final = staging / f"{comp.name}.mlpackage"
                rewrite = gptq.get(comp.name) if spec.gptq else None
                if comp.name == DECODER:
                    records[comp.name] = _decoder_record(comp, config, scratch, final, spec, shapes, extra,
                                                         deployment_target, rewrite, isolate)
                    continue
                done = _compress(scratch / f"{comp.name}.mlpackage", final, spec, isolate)
                _apply_gptq(final, rewrite, spec)
                records[comp.name] = coreml_export.component_record(comp, config, final, spec, done, feeds[comp.name],
                                                                    deployment_target)
            manifests.append(_manifest(checkpoint, family, quant, "coreml", config, extra, records, staging))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifests


def _convert(model: Any, checkpoint: Checkpoint, family: FamilySpec, comp: ComponentDef, scratch: Path,
             feeds: dict[str, Any] | None, shapes: StaticShapes, deployment_target: str) -> None:
    """In process when ``model`` is given, else in a child process that loads the checkpoint itself."""
    if comp.name == DECODER:
        if model is None:
            coreml_export.convert_isolated(checkpoint.path, family.name, comp.name, scratch, {}, deployment_target,
                                           {"prefill_length": shapes.prefill_length, "capacity": shapes.kv_capacity})
        else:
            coreml_decoder.convert_decoder(model, comp, scratch, shapes.prefill_length, shapes.kv_capacity,
                                           deployment_target)
        return
    path = scratch / f"{comp.name}.mlpackage"
    if model is None:
        coreml_export.convert_isolated(checkpoint.path, family.name, comp.name, path, feeds or {}, deployment_target)
    else:
        coreml_export.convert_component(model, comp, path, feeds or {}, deployment_target)


def _compress(source: Path, target: Path, spec: QuantSpec, isolate: bool) -> dict[str, Any]:
    if isolate:
        return coreml_export.compress_isolated(source, target, spec)
    with coreml_decoder.without_broken_state_pass():  # only stateful programs need it; harmless elsewhere
        return coreml_export.compress_package(source, target, spec)


def _apply_gptq(package: Path, rewrite: dict[str, Any] | None, spec: QuantSpec) -> None:
    if rewrite is None:
        return
    done = coreml_gptq.rewrite_int4(package, rewrite["weights"], rewrite["hessians"], spec.block_size)
    if not done:
        raise QuantizationError(f"GPTQ found no int4 weight to rewrite in {package.name}",
                                "check that the component has Linear layers above coremltools' size threshold")


def _decoder_record(comp: ComponentDef, config: Any, scratch: Path, final: Path, spec: QuantSpec,
                    shapes: StaticShapes, extra: dict[str, Any], deployment_target: str,
                    rewrite: dict[str, Any] | None = None, isolate: bool = False) -> dict[str, Any]:
    """Compress each function's package, merge them into one multifunction package, and describe it."""
    names = coreml_decoder.function_names(shapes.prefill_length)
    parts: dict[str, Path] = {}
    done: dict[str, Any] = {}
    try:
        for name in names:
            parts[name] = final.with_name(f".{name}.{final.name}")
            done = _compress(scratch / f"{comp.name}.{name}.mlpackage", parts[name], spec, isolate)
            _apply_gptq(parts[name], rewrite, spec)
        coreml_decoder.merge_functions(parts, final)
    finally:
        for part in parts.values():
            shutil.rmtree(part, ignore_errors=True)
    functions = {name: coreml_decoder.decoder_feeds(comp, config, length, shapes.kv_capacity)
                 for name, length in zip(names, (shapes.prefill_length, 1), strict=True)}
    image_token = (extra.get("special_tokens") or {}).get("image_token_id")
    digest, size = coreml_export.package_digest(final)
    _, out_defs = comp.signature(config)
    return {"file": final.name, "sha256": digest, "bytes": size, "format": "mlpackage",
            "inputs": [t.to_json() for t in coreml_decoder.decoder_inputs(comp, config)],
            "outputs": [out_defs[0].to_json()], "quantization": coreml_export.quant_record(spec, done),
            "static": coreml_decoder.decoder_static(functions, shapes.kv_capacity, shapes.prefill_length,
                                                    image_token),
            "coreml": {"deployment_target": deployment_target, "compute_precision": "float16",
                       "program": "mlprogram", "functions": list(names), "states": list(coreml_decoder.STATES)}}
