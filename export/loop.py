"""checkpoint dir -> bundle dirs: the one export loop, over any registered target.

load checkpoint -> check the request against the target's capability table -> per component: convert -> calibrate
if asked -> quantize into each bundle -> record in the manifest -> publish each bundle atomically. The loop knows
targets only through ``targets.base.Target``; everything is written into hidden sibling directories and swapped into
place only once the manifest is complete, under a lock that keeps other exports off each output (``bundle_writer``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pocketvlm.export.app_block import write_app_block
from pocketvlm.export.bundle_writer import (
    PENDING_MANIFEST,
    Progress,
    build_manifest,
    check_destination,
    disk_full_error,
    export_lock,
    full_filesystems,
    publish,
    remove_stale_staging,
    ticker,
)
from pocketvlm.export.checkpoint import Checkpoint, read_checkpoint
from pocketvlm.export.families.vision_split import export_components
from pocketvlm.export.golden import write_golden
from pocketvlm.export.hf_quiet import quiet_transformers
from pocketvlm.export.quant.config import QuantConfig
from pocketvlm.export.registry import family_for_model_type
from pocketvlm.export.spec import ComponentDef, FamilySpec
from pocketvlm.export.static_shapes import StaticShapes
from pocketvlm.export.targets.base import ExportContext, ExportOptions, Target, check_capabilities
from pocketvlm.export.targets.registry import get_target, offered_by
from pocketvlm.runtime.errors import ExportError, ModelDirError, QuantizationError

# component name -> recorded input feeds: a list for an ONNX graph or a Core ML wrapper (quant.calibration.
# FeedRecorder), a dict of signature name -> list for a LiteRT component (quant.calibration.SignatureFeedRecorder)
Calibration = Mapping[str, Any]


def export_bundle(model_dir: Path | str, out_dir: Path | str, target: str = "onnx",
                  quant: QuantConfig | None = None, progress: Progress | None = None,
                  split_vision: bool = False, shapes: StaticShapes | None = None,
                  deployment_target: str = "iOS18", **options: Any) -> Path:
    """Export a checkpoint directory to a verified-on-load bundle. Returns the bundle directory. ``options``:
    ``ExportOptions`` fields (``socs``, ``calibration_images``, ``calibration_texts`` for ``qnn``)."""
    return export_bundles(model_dir, [(out_dir, quant or QuantConfig())], target, progress, split_vision,
                          shapes=shapes, deployment_target=deployment_target, **options)[0]


def export_bundles(model_dir: Path | str, outputs: list[tuple[Path | str, QuantConfig]], target: str = "onnx",
                   progress: Progress | None = None, split_vision: bool = False,
                   calibration: Calibration | None = None, shapes: StaticShapes | None = None,
                   deployment_target: str = "iOS18", isolate: bool = True, socs: tuple[str, ...] = ("SM8650",),
                   calibration_images: tuple[Path, ...] = (), calibration_texts: tuple[str, ...] = (),
                   mediapipe: tuple[str, ...] = (), mediapipe_scale: int | None = None) -> list[Path]:
    """Export one checkpoint to several bundles (e.g. fp32, int8 and int4) from one load and one conversion; each
    bundle is published atomically on its own. ``calibration`` maps a component name to the feeds it sees in use
    (recorded through an fp32 bundle of the same target); components quantized with GPTQ need it. ``shapes`` sets
    the static shapes of a ``tflite`` or ``coreml`` bundle; ``deployment_target`` and ``isolate`` (each component
    converted in its own process) apply to ``coreml``; ``socs`` and the calibration images / texts (static QDQ
    activations) to ``qnn``; ``mediapipe`` names components that also get a MediaPipe Tasks variant
    (``image_encoder`` of a CLIP / SigLIP ``tflite`` bundle; ``mediapipe_scale``: its input's multiple of the
    tower's size). Each output is locked for the whole export (a second export to it raises
    ``ExportError`` before writing anything), and a full disk raises ``ExportError`` with nothing left behind."""
    model_dir = Path(model_dir)
    plan = [(Path(out), quant) for out, quant in outputs]
    say = progress or (lambda message: None)
    chosen = get_target(target)
    options = ExportOptions(shapes or StaticShapes(), deployment_target, isolate, split_vision, tuple(socs),
                            tuple(Path(p) for p in calibration_images), tuple(calibration_texts),
                            (mediapipe,) if isinstance(mediapipe, str) else tuple(mediapipe), mediapipe_scale)
    if not plan or len({out.resolve() for out, _ in plan}) != len(plan):
        raise ExportError("each bundle needs its own output directory", "give every quantization its own --out")
    if split_vision and not chosen.splits_vision:
        raise ExportError(f"--split-vision is not available for --target {chosen.name}",
                          f"drop --split-vision for --target {chosen.name}")
    if mediapipe and not chosen.mediapipe_variants:
        raise ExportError(f"--mediapipe is not available for --target {chosen.name}",
                          "use --target tflite (MediaPipe Tasks run .tflite models)")
    checkpoint = read_checkpoint(model_dir)
    family = family_for_model_type(checkpoint.model_type)
    components = export_components(family, split_vision)
    _check_request(chosen, components, plan, options, calibration or {}, model_dir)
    with ExitStack() as locks:  # before anything is written: a second export to one of these outputs stops here
        for out_dir, _ in plan:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            locks.enter_context(export_lock(out_dir))
        _write(chosen, checkpoint, family, components, plan, say, options, calibration or {})
    return [out for out, _ in plan]


def _write(target: Target, checkpoint: Checkpoint, family: FamilySpec, components: tuple[ComponentDef, ...],
           plan: list[tuple[Path, QuantConfig]], say: Progress, options: ExportOptions,
           calibration: Calibration) -> None:
    """Stage every bundle beside its output, then publish each. On any failure the staging and scratch directories
    are removed; a full disk becomes one ``ExportError`` (``bundle_writer.full_filesystems``)."""
    stagings: list[Path] = []
    # the unquantized artifacts every bundle is quantized from; named like a staging directory so a killed run's
    # copy is removed by the next export's stale-staging sweep
    scratch = plan[0][0].with_name(f".{plan[0][0].name}.partial-{os.getpid()}-scratch")
    try:
        for out_dir, _ in plan:
            remove_stale_staging(out_dir)
            stagings.append(out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}"))
            stagings[-1].mkdir()
        with quiet_transformers():
            manifests = _run(target, checkpoint, family, components, stagings, [q for _, q in plan], say, options,
                             calibration, scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        for staging, manifest in zip(stagings, manifests, strict=True):
            skipped = write_app_block(staging, manifest)
            if skipped:
                say(skipped)
            say(f"recording the golden record (the runtime's run of {staging.name.split('.partial-')[0][1:]})")
            write_golden(staging, manifest, family, target)
            (staging / PENDING_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for staging, (out_dir, _) in zip(stagings, plan, strict=True):
            publish(staging, out_dir)
            say(f"bundle written: {out_dir}")
    except BaseException as exc:
        full = full_filesystems(exc, [out for out, _ in plan])  # before the partial export's files are removed
        for leftover in (*stagings, scratch):
            shutil.rmtree(leftover, ignore_errors=True)
        if full is None:
            raise
        raise disk_full_error([out for out, _ in plan], full) from exc


def _check_request(target: Target, components: tuple[ComponentDef, ...], plan: list[tuple[Path, QuantConfig]],
                   options: ExportOptions, calibration: Calibration, model_dir: Path) -> None:
    """Everything that can be refused is refused here, before a directory is created."""
    names = tuple(c.name for c in components)
    for out_dir, quant in plan:
        quant.check_components(names)
        for name in names:
            requested = quant.requested(name)
            check_capabilities(target, requested, name, offered_by(requested.method))
            target.check(quant.for_component(name), name, options)
        check_destination(out_dir, model_dir)
        for name in sorted(quant.gptq_components(names)):
            if not calibration.get(name):
                raise QuantizationError(f"GPTQ was asked for {name} but no calibration feeds were given for it",
                                        "pass calibration={component: feeds} to export_bundles, or drop gptq")


def _load(family: FamilySpec, checkpoint: Checkpoint) -> Any:
    try:
        return family.load_model(checkpoint.path)
    except Exception as exc:  # safetensors, torch and transformers each raise their own types for a bad checkpoint
        raise ModelDirError(f"cannot load weights from {checkpoint.path}: {str(exc).splitlines()[0]}",
                            "check that the weight files are complete and match config.json") from exc


def _run(target: Target, checkpoint: Checkpoint, family: FamilySpec, components: tuple[ComponentDef, ...],
         stagings: list[Path], quants: list[QuantConfig], say: Progress, options: ExportOptions,
         calibration: Calibration, scratch: Path) -> list[dict[str, Any]]:
    names = tuple(c.name for c in components)
    gptq = set().union(*(q.gptq_components(names) for q in quants))
    calibrated = [c for c in components if c.name in gptq]
    tick = ticker(say, 2 + len(components) * (1 + len(stagings)) + len(calibrated))
    tick(f"loading {family.name} checkpoint {checkpoint.path.name}")
    model = _load(family, checkpoint)
    tick("writing tokenizer and preprocessing constants")
    metadata = [family.bundle_metadata(model, checkpoint.path, staging) for staging in stagings]
    scratch.mkdir()  # the unquantized artifacts every bundle is quantized from (removed by the caller)
    ctx = ExportContext(checkpoint, family, options, model, model.config, metadata, scratch)
    del model  # the context holds the only reference, so release_model frees it
    stats: dict[str, Any] = {}

    def calibrate() -> None:
        for comp in calibrated:
            tick(f"collecting GPTQ Hessians of {comp.name} on {len(calibration[comp.name])} calibration feeds")
            stats[comp.name] = target.calibrate(ctx, comp, calibration[comp.name])

    target.prepare(ctx)
    if target.calibrates_on_model:
        calibrate()
    for comp in components:
        tick(f"converting {comp.name} to {target.title} ({target.precision})")
        target.convert(ctx, comp)
    ctx.release_model()  # quantization works on the converted artifacts (peak memory)
    if not target.calibrates_on_model:
        calibrate()
    manifests = []
    for index, (staging, quant) in enumerate(zip(stagings, quants, strict=True)):
        records = {}
        for comp in components:
            spec = quant.for_component(comp.name)
            tick(f"quantizing {comp.name} ({spec.method}) into {staging.name.split('.partial-')[0][1:]}")
            dest = staging / f"{comp.name}{target.suffix}"
            done = target.quantize(ctx, comp, spec, dest, stats.get(comp.name) if spec.gptq else None)
            records[comp.name] = target.describe(ctx, comp, spec, dest, index, done)
        manifests.append(build_manifest(checkpoint, family, quant, target.name, ctx.config, metadata[index],
                                        records, staging))
    return manifests
