"""``pocketvlm npu-check``: what Qualcomm's own HTP compiler does with each component of an ONNX bundle, per SoC.

For every component (a decoder's prefill and decode calls separately) and SoC:

- **as exported**: the share of nodes the QNN EP takes with the bundle's dynamic dimensions left free (the EP needs
  static shapes, so a dynamic graph mostly stays on CPU, and the report says so in those words);
- **pinned**: the dims fixed to the sizes the runtime really feeds (recorded by running the bundle's own golden task
  on CPU, or ``pins`` given by the user), then nodes on HTP / total, HTP partitions, every op left on CPU with the
  EP's own reason, the compile's pass/fail with the backend's error lines, compile time and context-binary size;
- the emulated outputs' error against the same graph on ONNX Runtime's CPU provider, on those recorded feeds (fp32
  for an fp32 bundle; for a quantized bundle the reference is that quantized graph on CPU, and is labelled so).

Everything runs in child processes (``probe``). Emulator timings are never reported as latency.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.npu.probe import Probe, probe
from pocketvlm.export.quant.calibration import FeedRecorder
from pocketvlm.export.static_shapes import LOOP_DIMS
from pocketvlm.runtime.backends import OrtSession
from pocketvlm.runtime.errors import BundleError
from pocketvlm.runtime.manifest import Bundle, load_bundle
from pocketvlm.runtime.qnn import Soc, versions

EMULATOR_NOTE = ("outputs are the HTP's own arithmetic (emulated on x86_64); emulator compile and run times are "
                 "not phone latency")


def recorded_feeds(bundle: Bundle, image_size: int | None = None) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every component's feeds in the bundle's golden task (caption, or zero-shot labels) run on ONNX Runtime's CPU
    provider; ``image_size`` resizes the golden image to a square of that side first."""
    from pocketvlm.export.golden import GOLDEN_LABELS, golden_image
    from pocketvlm.runtime.dual_encoder import DualEncoder
    from pocketvlm.runtime.generation import GenerationConfig
    from pocketvlm.runtime.vlm import VisionLanguageModel

    image = golden_image()
    if image_size:
        image = image.resize((image_size, image_size))
    vlm = bundle.manifest.get("task") == "image_text_to_text"
    model: Any = (VisionLanguageModel if vlm else DualEncoder).load(bundle)
    recorders = {name: FeedRecorder(session) for name, session in model.sessions.items()}
    model.sessions.update(recorders)
    if vlm:
        model.generate(image, config=GenerationConfig(max_new_tokens=3, ignore_eos=True))
    else:
        model.classify([image], list(GOLDEN_LABELS))
    return {name: recorder.feeds for name, recorder in recorders.items()}


def entries(name: str, calls: list[dict[str, np.ndarray]], spec: Any) -> dict[str, dict[str, np.ndarray]]:
    """The calls npu-check compiles: an encoder's first call at batch 1, a decoder's prefill and one decode step."""
    if not calls:
        raise BundleError(f"the golden task never ran {name}", "check the bundle with `pocketvlm selftest`")
    if name != "text_decoder":
        loop = {t.name for t in spec.inputs if t.shape and t.shape[0] in LOOP_DIMS}
        return {name: {k: (v[:1] if k in loop else v) for k, v in calls[0].items()}}
    picked = {"prefill": calls[0]}
    decode = next((c for c in calls[1:] if c["input_ids"].shape[1] == 1), None)
    if decode is not None:
        picked["decode"] = decode
    return picked


def pins_for(spec: Any, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Symbolic dim name -> the size the recorded feeds give it (inputs and outputs of the manifest)."""
    pins: dict[str, int] = {}
    for tensor in spec.inputs:
        if tensor.name not in feeds:
            continue
        for dim, size in zip(tensor.shape, np.shape(feeds[tensor.name]), strict=False):
            if isinstance(dim, str):
                pins.setdefault(dim, int(size))
    return pins


def compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    rows = {}
    for name, want in ref.items():
        if name not in got or not name or want.dtype.kind != "f":
            continue
        a, b = np.asarray(got[name], np.float64).ravel(), np.asarray(want, np.float64).ravel()
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        both_zero = not np.abs(a).max(initial=0) and not np.abs(b).max(initial=0)
        cosine = 1.0 if both_zero else float(a @ b / (norms + 1e-30))
        row = {"max_abs": float(np.abs(a - b).max()), "reference_max_abs": float(np.abs(b).max()),
               "cosine": cosine}
        if name == "logits":
            row["argmax_equal"] = float(np.argmax(got[name], -1).tolist() == np.argmax(want, -1).tolist())
        rows[name] = row
    return rows


def check_entry(path: Path, soc: Soc, pins: dict[str, int], feeds: dict[str, np.ndarray], reference: Any,
                work: Path, exported: Probe) -> dict[str, Any]:
    """One entry on one SoC: ``exported`` is the graph's probe as exported (one per graph and SoC: a decoder's
    prefill and decode calls share it), then the pinned compile, its context, and the emulated run of ``feeds``."""
    context = work / f"{path.stem}.{soc.name}.onnx"
    pinned = probe(path, soc, pins, context=context, feeds=feeds)
    row: dict[str, Any] = {"as_exported": summary(exported), "pinned": summary(pinned)}
    if pinned.ok:
        row["pinned"]["context_bytes"] = sum(p.stat().st_size for p in pinned.context_files)
        if pinned.run_error:
            row["run_error"] = pinned.run_error
        else:
            row["error_vs_cpu"] = compare(pinned.outputs, reference.run(feeds))
    dynamic = sum(1 for n in exported.cpu_nodes if n["reason"].startswith("Cannot get shape"))
    if exported.ok and exported.share < 0.5 and dynamic:
        row["dynamic_shapes"] = (f"as exported, {exported.total - exported.htp_nodes} of {exported.total} nodes run "
                                 f"on CPU because of dynamic shapes ({dynamic} nodes: the EP's 'Cannot get shape'); "
                                 f"pinned to {fmt_pins(pins)}: {pinned.share * 100:.1f}% on the HTP")
    for file in pinned.context_files:
        file.unlink(missing_ok=True)
    return row


def summary(result: Probe) -> dict[str, Any]:
    if not result.ok:
        return {"compiled": False, "error_lines": result.error_lines}
    return {"compiled": True, "htp_nodes": result.htp_nodes, "total_nodes": result.total,
            "share": round(result.share, 4), "partitions": result.partitions, "cpu_ops": result.cpu_ops(),
            "compile_seconds": result.compile_seconds}


def fmt_pins(pins: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in pins.items()) or "nothing to pin"


def npu_check(bundle_dir: Path | str, socs: tuple[Soc, ...], pins: dict[str, int] | None = None,
              image_size: int | None = None, progress: Callable[[str], None] | None = None,
              components: tuple[str, ...] = ()) -> dict[str, Any]:
    """The report of ``npu-check`` (see the module docstring); ``components`` limits it to those (default: all)."""
    say = progress or (lambda message: None)
    bundle = load_bundle(bundle_dir)
    unknown = sorted(set(components) - set(bundle.components))
    if unknown:
        raise BundleError(f"{bundle_dir} has no component {', '.join(unknown)}",
                          f"use one or more of {', '.join(bundle.components)}")
    onnx = {name: spec for name, spec in bundle.components.items()
            if spec.format == "onnx" and (not components or name in components)}
    if not onnx or bundle.manifest["target"] != "onnx":
        raise BundleError(f"{bundle_dir} is a {bundle.manifest['target']} bundle; npu-check compiles ONNX bundles",
                          "export with --target onnx (or check a --target qnn bundle's manifest: it records this)")
    say("recording each component's feeds from the bundle's golden task on CPU")
    feeds = recorded_feeds(bundle, image_size)
    quant = {name: spec.quantization.get("method", "fp32") for name, spec in onnx.items()}
    report: dict[str, Any] = {"bundle": str(bundle_dir), "family": bundle.family, "target": "qnn (HTP)",
                              **versions(), "socs": [s.name for s in socs], "quantization": quant,
                              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                              "note": EMULATOR_NOTE, "components": {}}
    with tempfile.TemporaryDirectory(prefix="pocketvlm-npu-check-") as tmp:
        for name, spec in onnx.items():
            path = bundle.file(spec.file)
            reference = OrtSession(path)
            component: dict[str, Any] = {"reference": f"{quant[name]} graph on ONNX Runtime CPU", "entries": {}}
            exported: dict[str, Probe] = {}
            for entry, entry_feeds in entries(name, feeds.get(name, []), spec).items():
                entry_pins = {**pins_for(spec, entry_feeds), **(pins or {})}
                rows: dict[str, Any] = {"pinned_dims": entry_pins, "pinned_from": "the golden task's feeds"
                                        + (" and --pin" if pins else "")}
                for soc in socs:
                    say(f"compiling {name} ({entry}) for {soc.name} ({soc.marketing}, HTP {soc.arch})")
                    if soc.name not in exported:
                        exported[soc.name] = probe(path, soc)
                    rows[soc.name] = check_entry(path, soc, entry_pins, entry_feeds, reference, Path(tmp),
                                                 exported[soc.name])
                component["entries"][entry] = rows
            report["components"][name] = component
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"npu-check: {report['bundle']} ({report['family']}) on Qualcomm HTP, QAIRT {report['qairt']} "
             f"(onnxruntime-qnn {report['onnxruntime_qnn']}); {report['note']}"]
    for name, component in report["components"].items():
        for entry, rows in component["entries"].items():
            label = name if entry == name else f"{name}/{entry}"
            lines.append(f"{label}: pinned {fmt_pins(rows['pinned_dims'])} (from {rows['pinned_from']})")
            for soc in report["socs"]:
                row = rows[soc]
                lines += ["  " + line for line in soc_lines(soc, row, component["reference"])]
    return "\n".join(lines)


def soc_lines(soc: str, row: dict[str, Any], reference: str) -> list[str]:
    exported, pinned = row["as_exported"], row["pinned"]
    head = f"{soc}: as exported " + (f"{exported['htp_nodes']}/{exported['total_nodes']} nodes on HTP"
                                     if exported["compiled"] else "does not compile")
    if not pinned["compiled"]:
        return [f"{head}; pinned: COMPILE FAILED: " + " | ".join(pinned["error_lines"][:4])]
    lines = [f"{head}; pinned {pinned['htp_nodes']}/{pinned['total_nodes']} ({pinned['share'] * 100:.1f}%) on HTP "
             f"in {pinned['partitions']} partition(s), context {pinned['context_bytes'] / 1e6:.2f} MB, compiled in "
             f"{pinned['compile_seconds']:.1f} s"]
    if "dynamic_shapes" in row:
        lines.append("  " + row["dynamic_shapes"])
    for op in pinned["cpu_ops"]:
        lines.append(f"  on CPU: {op['op']} x{op['nodes']} ({op['reason']}) e.g. {', '.join(op['examples'])}")
    if "run_error" in row:
        lines.append(f"  compiled, but the emulated HTP failed to run the recorded feeds: {row['run_error']}")
    errors = row.get("error_vs_cpu", {})
    cache = {k: v for k, v in errors.items() if k.startswith("present_")}
    for output, err in errors.items():
        if output not in cache:
            extra = f", argmax equal {bool(err['argmax_equal'])}" if "argmax_equal" in err else ""
            lines.append(f"  emulated {output} vs {reference}: max abs {err['max_abs']:.3e} (of "
                         f"{err['reference_max_abs']:.3g}), cosine {err['cosine']:.6f}{extra}")
    if cache:
        worst = min(cache, key=lambda k: cache[k]["cosine"])
        lines.append(f"  emulated KV entries ({len(cache)} tensors) vs {reference}: worst cosine "
                     f"{cache[worst]['cosine']:.6f} ({worst}), max abs {max(v['max_abs'] for v in cache.values()):.3e}")
    return lines


def htp_section(bundle: Any) -> dict[str, Any]:
    """The parity report's ``htp`` block for a QNN bundle (what its manifest recorded at compile time, per component,
    entry and SoC); nothing for other targets."""
    found: dict[str, Any] = {}
    for name, record in bundle.manifest["components"].items():
        if record.get("format") != "qnn_context":
            continue
        for soc, context in record["qnn"]["contexts"].items():
            for entry, row in context["entries"].items():
                found.setdefault(name, {})[f"{entry}@{soc}"] = {
                    k: row[k] for k in ("htp_nodes", "total_nodes", "partitions", "cpu_ops", "binary_bytes",
                                        "compile_seconds")}
    return {"htp": found} if found else {}


def format_htp(section: dict[str, Any]) -> str:
    lines = []
    for name, entries in section.items():
        for key, row in entries.items():
            entry, soc = key.split("@")
            label = name if entry == name else f"{name}/{entry}"
            ops = ", ".join(f"{o['op']} x{o['nodes']} ({o['reason']})" for o in row["cpu_ops"]) or "nothing"
            lines.append(f"{label} HTP {soc}: {row['htp_nodes']}/{row['total_nodes']} nodes in {row['partitions']} "
                         f"partition(s), context {row['binary_bytes'] / 1e6:.2f} MB; on CPU: {ops}")
    return "\n".join(lines)
