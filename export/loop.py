"""checkpoint dir -> bundle dir: load, export each component, quantize, write manifest, then publish atomically.

Everything is written into a hidden sibling directory and renamed into place only once the manifest is complete, so
an export interrupted at any point leaves nothing that loads as a bundle.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from pocketvlm.export.checkpoint import Checkpoint, read_checkpoint
from pocketvlm.export.hf_quiet import quiet_transformers
from pocketvlm.export.quant.config import QuantConfig, QuantSpec
from pocketvlm.export.registry import ComponentDef, FamilySpec, family_for_model_type
from pocketvlm.export.static_shapes import StaticShapes, prepare_metadata, static_examples
from pocketvlm.export.targets.coreml.convert import COREML_ONLY, check_coreml_spec
from pocketvlm.export.targets.onnx.quantize import external_data_path, quantize_file
from pocketvlm.export.targets.tflite.convert import convert_component
from pocketvlm.export.targets.tflite.quantize import check_tflite_spec, component_record, quantize_tflite
from pocketvlm.runtime.errors import ExportError, ModelDirError, QuantizationError
from pocketvlm.runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION, sha256_file

TARGETS = ("onnx", "tflite", "coreml")
PENDING_MANIFEST = MANIFEST_NAME + ".partial"  # renamed to manifest.json only after the directory is in place
TOOLS = ("pocketvlm", "torch", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy", "litert-torch",
         "ai-edge-quantizer", "ai-edge-litert", "coremltools")

Progress = Callable[[str], None]
# component name -> recorded input feeds: a list for an ONNX graph (gptq.FeedRecorder), a dict of signature name ->
# list for a LiteRT component (tflite_export.SignatureFeedRecorder)
Calibration = Mapping[str, Any]


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux and macOS report ru_maxrss in KiB and bytes respectively)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _check_destination(out_dir: Path, model_dir: Path) -> None:
    out, src = out_dir.resolve(), model_dir.resolve()
    if out == src or src in out.parents:
        raise ExportError(f"output {out_dir} is inside the checkpoint directory {model_dir}",
                          "write the bundle elsewhere; pocketvlm never modifies a checkpoint directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is a file", "choose a directory path for --out")
    replaceable = (out_dir / MANIFEST_NAME).is_file() or (out_dir / PENDING_MANIFEST).is_file()
    if out_dir.is_dir() and any(out_dir.iterdir()) and not replaceable:
        raise ExportError(f"output directory {out_dir} is not empty and is not a pocketvlm bundle",
                          "choose a new or empty directory (an existing bundle there is replaced)")


def _component_record(component: ComponentDef, config: Any, path: Path, quant: dict) -> dict[str, Any]:
    import onnx

    name = component.name
    inputs, outputs = component.signature(config)
    model = onnx.load(str(path), load_external_data=False)  # parsed once: a 2B decoder's graph is over 1 GB
    got = [i.name for i in model.graph.input]
    if got != [t.name for t in inputs]:
        raise ExportError(f"{name}: exported graph inputs {got} differ from the declared {[t.name for t in inputs]}",
                          "fix the family's component signature")
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "format": "onnx",
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": [t.to_json() for t in inputs],
        "outputs": [t.to_json() for t in outputs],
        "quantization": quant,
        **({"external_data": external_data_path(path).name} if external_data_path(path).exists() else {}),
    }


def split_report(config: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """What crosses the ViT -> Transformer boundary: its tensor, and bytes per image at each dtype."""
    from pocketvlm.export.families.vision_split import vision_width

    width = vision_width(config)
    image = metadata["preprocessing"]["image"]
    patch = image["patch_size"]
    examples = {}
    for side in (224, 448, 896):
        patches = (side // patch) ** 2
        examples[f"{side}x{side}"] = {"patches": patches,
                                      **{dtype: patches * width * size for dtype, size in
                                         (("float32", 4), ("float16", 2), ("int8", 1))}}
    return {"boundary": "vision_frontend -> vision_transformer",
            "interface": {"name": "vision_hidden", "shape": ["patches", width], "dtype": "float32",
                          "mask": None, "note": "one image per call; patches in merge-block order"},
            "bytes_per_patch": {"float32": 4 * width, "float16": 2 * width, "int8": width},
            "bytes_per_image": examples}


def _publish(staging: Path, out_dir: Path) -> None:
    """Swap the finished staging directory into place (replacing an existing bundle) with renames only.

    The manifest travels as ``manifest.json.partial`` and takes its real name last, so neither the staging
    directory nor a half-published output ever loads as a bundle.
    """
    previous = None
    if out_dir.exists():
        previous = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(previous)
    staging.rename(out_dir)
    (out_dir / PENDING_MANIFEST).rename(out_dir / MANIFEST_NAME)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _remove_stale_staging(out_dir: Path) -> None:
    """Staging or replaced directories left by an export that was killed (SIGKILL, power loss)."""
    for pattern in (f".{out_dir.name}.partial-*", f".{out_dir.name}.old-*"):
        for stale in out_dir.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def export_bundle(model_dir: Path | str, out_dir: Path | str, target: str = "onnx",
                  quant: QuantConfig | None = None, progress: Progress | None = None,
                  split_vision: bool = False, shapes: StaticShapes | None = None,
                  deployment_target: str = "iOS18") -> Path:
    """Export a checkpoint directory to a verified-on-load bundle. Returns the bundle directory."""
    return export_bundles(model_dir, [(out_dir, quant or QuantConfig())], target, progress, split_vision,
                          shapes=shapes, deployment_target=deployment_target)[0]


def export_bundles(model_dir: Path | str, outputs: list[tuple[Path | str, QuantConfig]], target: str = "onnx",
                   progress: Progress | None = None, split_vision: bool = False,
                   calibration: Calibration | None = None, shapes: StaticShapes | None = None,
                   deployment_target: str = "iOS18", isolate: bool = True) -> list[Path]:
    """Export one checkpoint to several bundles (e.g. fp32, int8 and int4) from one load and one fp32 graph export;
    each bundle is published atomically on its own. ``calibration`` maps a component name to the input feeds its
    ONNX graph sees in use (e.g. recorded from an fp32 bundle with ``gptq.FeedRecorder``); components quantized with
    GPTQ need it. ``shapes`` sets the static shapes of a ``tflite`` or ``coreml`` bundle (see
    ``tflite_export.StaticShapes``); ``deployment_target`` and ``isolate`` (each component converted in its own
    process) apply to ``coreml``."""
    model_dir = Path(model_dir)
    plan = [(Path(out), quant) for out, quant in outputs]
    say = progress or (lambda message: None)
    if target not in TARGETS:
        raise ExportError(f"target '{target}' is not available in this version",
                          f"use --target {' or '.join(TARGETS)}")
    if not plan or len({out.resolve() for out, _ in plan}) != len(plan):
        raise ExportError("each bundle needs its own output directory", "give every quantization its own --out")
    if target != "onnx" and split_vision:
        raise ExportError("--split-vision is available for --target onnx only", f"drop --split-vision for {target}")
    checkpoint = read_checkpoint(model_dir)
    family = family_for_model_type(checkpoint.model_type)
    components = family.export_components(split_vision)
    for _, quant in plan:
        for comp in components:
            _check_target_spec(target, quant.for_component(comp.name), comp.name, deployment_target)
    for out_dir, quant in plan:
        quant.check_components(tuple(c.name for c in components))
        _check_destination(out_dir, model_dir)
        for name in sorted(quant.gptq_components(tuple(c.name for c in components))):
            if not (calibration or {}).get(name):
                raise QuantizationError(f"GPTQ was asked for {name} but no calibration feeds were given for it",
                                        "pass calibration={component: feeds} to export_bundles, or drop gptq")
    stagings = []
    try:
        for out_dir, _ in plan:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_staging(out_dir)
            stagings.append(out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}"))
            stagings[-1].mkdir()
        with quiet_transformers():
            if target == "coreml":
                manifests = _export_coreml(checkpoint, family, components, stagings, [q for _, q in plan], say,
                                           shapes or StaticShapes(), deployment_target, isolate, calibration or {})
            elif target == "tflite":
                manifests = _export_tflite(checkpoint, family, components, stagings, [q for _, q in plan], say,
                                           shapes or StaticShapes(), calibration or {})
            else:
                manifests = _export_into(checkpoint, family, components, stagings, [q for _, q in plan], say,
                                         target, calibration or {})
        for staging, manifest in zip(stagings, manifests, strict=True):
            (staging / PENDING_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for staging, (out_dir, _) in zip(stagings, plan, strict=True):
            _publish(staging, out_dir)
            say(f"bundle written: {out_dir}")
    except BaseException:
        for staging in stagings:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out for out, _ in plan]


def _check_target_spec(target: str, spec: QuantSpec, component: str, deployment_target: str) -> None:
    """Each target refuses, by name, the quantization settings it cannot apply."""
    if target == "coreml":
        check_coreml_spec(spec, component, deployment_target)
        return
    if spec.method in COREML_ONLY:
        raise QuantizationError(f"{spec.method} ({component}) is a Core ML method", "use --target coreml, or int4")
    if target == "tflite":
        check_tflite_spec(spec, component)


def _load(family: FamilySpec, checkpoint: Checkpoint) -> Any:
    try:
        return family.load_model(checkpoint.path)
    except Exception as exc:  # safetensors, torch and transformers each raise their own types for a bad checkpoint
        raise ModelDirError(f"cannot load weights from {checkpoint.path}: {str(exc).splitlines()[0]}",
                            "check that the weight files are complete and match config.json") from exc


def _ticker(say: Progress, steps: int) -> Progress:
    """Numbered progress lines with elapsed time and peak memory."""
    started, step = time.perf_counter(), 0

    def tick(message: str) -> None:
        nonlocal step
        step += 1
        elapsed = time.perf_counter() - started
        say(f"[{step}/{steps}] {message} ({elapsed:.1f}s, peak RSS so far {peak_rss_gb():.1f} GB)")

    return tick


def load_static(checkpoint: Checkpoint, family: FamilySpec, stagings: list[Path], shapes: StaticShapes,
                tick: Progress) -> tuple[Any, list[dict[str, Any]]]:
    """The model and each bundle's metadata for a static-shape target (LiteRT, Core ML): fixed image grid and a
    tokenizer padded to max_length."""
    tick(f"loading {family.name} checkpoint {checkpoint.path.name}")
    model = _load(family, checkpoint)
    tick("writing tokenizer and preprocessing constants")
    vision = getattr(model.config, "vision_config", None)
    multiple = getattr(vision, "patch_size", 0) * getattr(vision, "spatial_merge_size", 0) or None
    extras = [family.bundle_metadata(model, checkpoint.path, staging) for staging in stagings]
    for extra in extras:
        prepare_metadata(extra, shapes, multiple)
    return model, extras


def _export_tflite(checkpoint: Checkpoint, family: FamilySpec, components: tuple[ComponentDef, ...],
                   stagings: list[Path], quants: list[QuantConfig], say: Progress,
                   shapes: StaticShapes, calibration: Calibration) -> list[dict[str, Any]]:
    """One fp32 ``.tflite`` per component (litert-torch), then ai-edge-quantizer per bundle (``calibration``: per
    component, signature name -> static feeds, for GPTQ)."""
    tick = _ticker(say, 2 + len(components) * (1 + len(stagings)))
    model, extras = load_static(checkpoint, family, stagings, shapes, tick)
    config = model.config
    scratch = stagings[0].with_name(stagings[0].name + "-fp32")
    scratch.mkdir()
    try:
        examples = {}
        for comp in components:
            tick(f"converting {comp.name} to LiteRT (fp32)")
            examples[comp.name] = static_examples(comp, config, extras[0], shapes)
            convert_component(model, comp, scratch / f"{comp.name}.tflite", examples[comp.name])
        del model
        gc.collect()
        manifests = []
        image_token = (extras[0].get("special_tokens") or {}).get("image_token_id")
        for staging, quant, extra in zip(stagings, quants, extras, strict=True):
            records = {}
            for comp in components:
                spec = quant.for_component(comp.name)
                tick(f"quantizing {comp.name} ({spec.method}) into {staging.name.split('.partial-')[0][1:]}")
                final = staging / f"{comp.name}.tflite"
                quantize_tflite(scratch / f"{comp.name}.tflite", final, spec, comp.name,
                                calibration.get(comp.name) if spec.gptq else None)
                records[comp.name] = component_record(comp, config, final, spec, examples[comp.name], shapes,
                                                      image_token)
            manifests.append(_manifest(checkpoint, family, quant, "tflite", config, extra, records, staging))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifests


def _export_coreml(checkpoint: Checkpoint, family: FamilySpec, components: tuple[ComponentDef, ...],
                   stagings: list[Path], quants: list[QuantConfig], say: Progress, shapes: StaticShapes,
                   deployment_target: str, isolate: bool, calibration: Calibration) -> list[dict[str, Any]]:
    from pocketvlm.export.targets.coreml.target import export_coreml

    return export_coreml(checkpoint, family, components, stagings, quants, say, shapes, deployment_target, isolate,
                         calibration)


def _export_into(checkpoint: Checkpoint, family: FamilySpec, components: tuple[ComponentDef, ...],
                 stagings: list[Path], quants: list[QuantConfig], say: Progress, target: str,
                 calibration: Calibration) -> list[dict[str, Any]]:
    from pocketvlm.export.targets.onnx.convert import export_component

    calibrated = set().union(*(q.gptq_components(tuple(c.name for c in components)) for q in quants))
    # + one Hessian pass per GPTQ component
    tick = _ticker(say, 2 + len(components) * (1 + len(stagings)) + len(calibrated))

    tick(f"loading {family.name} checkpoint {checkpoint.path.name}")
    model = _load(family, checkpoint)
    tick("writing tokenizer and preprocessing constants")
    extras = [family.bundle_metadata(model, checkpoint.path, staging) for staging in stagings]
    # the fp32 graphs every bundle is quantized from; named like a staging directory so a killed run's copy is
    # removed by the next export's stale-staging sweep
    scratch = stagings[0].with_name(stagings[0].name + "-fp32")
    scratch.mkdir()
    try:
        config = model.config
        for comp in components:
            tick(f"exporting {comp.name} to ONNX (fp32)")
            export_component(model, comp, scratch / f"{comp.name}.onnx")
        del model  # quantization works on the ONNX files; free the torch weights first (peak memory)
        gc.collect()
        manifests = []
        hessians: dict[str, dict[str, Any]] = {}  # per component, collected once for every bundle that uses GPTQ
        for staging, quant, extra in zip(stagings, quants, extras, strict=True):
            records = {}
            for comp in components:
                spec = quant.for_component(comp.name)
                if spec.gptq and comp.name not in hessians:
                    feeds = calibration[comp.name]
                    tick(f"collecting GPTQ Hessians of {comp.name} on {len(feeds)} calibration feeds")
                    hessians[comp.name] = _hessians(scratch / f"{comp.name}.onnx", feeds)
                tick(f"quantizing {comp.name} ({spec.method}) into {staging.name.split('.partial-')[0][1:]}")
                final = staging / f"{comp.name}.onnx"
                quantize_file(scratch / f"{comp.name}.onnx", final, spec, hessians.get(comp.name))
                records[comp.name] = _component_record(comp, config, final, spec.record())
            manifests.append(_manifest(checkpoint, family, quant, target, config, extra, records, staging))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifests


def _hessians(path: Path, feeds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    import onnx

    from pocketvlm.export.targets.onnx.calibrate import collect_hessians
    from pocketvlm.export.targets.onnx.nbits import weight_nodes

    model = onnx.load(str(path))
    return collect_hessians(model, weight_nodes(model), feeds)


def _manifest(checkpoint: Checkpoint, family: FamilySpec, quant: QuantConfig, target: str, config: Any,
              extra: dict[str, Any], records: dict[str, Any], staging: Path) -> dict[str, Any]:
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    return {
        "schema_version": SCHEMA_VERSION,
        "pocketvlm_version": tool_versions().get("pocketvlm", "unknown"),
        "family": family.name,
        "model_type": checkpoint.model_type,
        "target": target,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {
            "model_dir_name": checkpoint.path.name,
            "config_sha256": checkpoint.config_sha256,
            "weights_sha256": checkpoint.weights_sha256(),
            "architectures": list(checkpoint.config.get("architectures") or []),
            "tools": tool_versions(),
        },
        "quantization": quant.to_json(),
        **extra,
        **({"vision_split": split_report(config, extra)} if "vision_frontend" in records else {}),
        "components": records,
        "files": [{"path": p.relative_to(staging).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size}
                  for p in files],
    }
