"""The Qualcomm HTP target: static-shape ONNX graphs compiled by the QNN HTP backend into EPContext models, per SoC.

Per component: the fp32 graph at the static shapes of ``export/static_shapes.py`` (encoders at batch 1, text at the
tokenizer's max length, the decoder as ``prefill_N`` and ``decode`` graphs over a KV cache of fixed capacity),
quantized for the HTP (``fp16``: the fp32 graph compiled with the HTP's fp16 precision; ``a16w8`` / ``a8w8``: static
QDQ calibrated on recorded feeds), then compiled in a child process for every ``--soc`` into
``<component>[.<entry>].<SOC>.onnx`` + ``..._qnn.bin``. The manifest records, per SoC, the placement the compiler
reported, the context sizes, compile times, and the emulated outputs' error against the fp32 graph on CPU (and
against the QDQ graph on CPU for quantized ones). The source graphs are not shipped: the contexts are what runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.npu.check import compare
from pocketvlm.export.npu.probe import probe
from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.spec import ComponentDef
from pocketvlm.export.static_shapes import LOOP_DIMS, prepare_static_bundles, static_examples
from pocketvlm.export.targets.base import Capabilities, ExportContext, ExportOptions, require_tool
from pocketvlm.export.targets.onnx.convert import export_component
from pocketvlm.export.targets.qnn.calibration import calibration_feeds
from pocketvlm.export.targets.qnn.qdq import quantize_qdq, record
from pocketvlm.export.targets.qnn.rewrite import degenerate_clips, gathernd_to_gather, rmsnorm_over_rank3
from pocketvlm.runtime.backends import OrtSession
from pocketvlm.runtime.errors import ExportError, QuantizationError
from pocketvlm.runtime.manifest import sha256_file
from pocketvlm.runtime.qnn import parse_socs, versions


class QnnTarget:
    name, title, precision, suffix = "qnn", "Qualcomm HTP (QNN)", "fp32", ".onnx"
    capabilities: Capabilities = {"fp16": {}, "a16w8": {}, "a8w8": {}}
    calibrates_on_model, splits_vision = False, True
    mediapipe_variants = False

    def check(self, spec: QuantSpec, component: str, options: ExportOptions) -> None:
        require_tool("onnxruntime_qnn", "qnn", "npu")
        parse_socs(options.socs)
        if spec.method in ("a16w8", "a8w8") and component in ("text_decoder", "vision_transformer",
                                                              "image_transformer"):
            raise QuantizationError(f"{spec.method} is not offered for {component} on --target qnn in this version "
                                    "(its calibration needs the feeds of the stage before it)",
                                    f"use fp16 for {component}, e.g. --quant {spec.method},{component}=fp16")
        if spec.method in ("a16w8", "a8w8") and component != "text_encoder" and not options.calibration_images:
            raise QuantizationError(f"{spec.method} for {component} needs calibration images",
                                    "pass --calibration-images DIR (32 or more representative images)")

    def prepare(self, ctx: ExportContext) -> None:
        prepare_static_bundles(ctx.metadata, ctx.options.shapes, ctx.config)

    def convert(self, ctx: ExportContext, component: ComponentDef) -> None:
        examples = static_examples(component, ctx.config, ctx.metadata[0], ctx.options.shapes)
        ctx.state[component.name] = {"examples": examples, "qdq": {}}
        for entry, feeds in examples.items():
            graph = ctx.scratch / f"{stem(component.name, entry)}.onnx"
            export_component(ctx.model, component, graph, feeds)
            gathernd_to_gather(graph)  # mask index grids: the HTP refuses GatherND
            degenerate_clips(graph)  # clamp(0, 0) over one image row: the HTP's ReluMinMax refuses it
            rmsnorm_over_rank3(graph)  # per-head RMSNorm: the HTP computes the rank-4 form wrongly

    def calibrate(self, ctx: ExportContext, component: ComponentDef, feeds: Any) -> Any:
        return feeds

    def quantize(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, dest: Path,
                 stats: Any) -> dict[str, Any]:
        state = ctx.state[component.name]
        staging = dest.parent
        calibration: list[dict[str, np.ndarray]] = []
        if spec.method in ("a16w8", "a8w8"):
            signature = component.signature(ctx.config)[0]
            calibration = calibration_feeds(component.name, signature, ctx.metadata[0], staging,
                                            ctx.options.calibration_images, ctx.options.calibration_texts)
        contexts: dict[str, Any] = {}
        for entry, example in state["examples"].items():
            source = ctx.scratch / f"{stem(component.name, entry)}.onnx"
            graph = source
            if calibration:
                graph = state["qdq"].get((entry, spec.method))
                if graph is None:
                    graph = ctx.scratch / f"{stem(component.name, entry)}.{spec.method}.onnx"
                    quantize_qdq(source, graph, spec.method, calibration)
                    state["qdq"][(entry, spec.method)] = graph
            feeds = calibration[0] if calibration else {k: v.numpy() for k, v in example.items()}
            # the CPU references, once per entry (every SoC's emulated outputs are compared with the same ones)
            fp32_cpu = OrtSession(source).run(feeds)
            qdq_cpu = OrtSession(graph).run(feeds) if graph != source else None
            for soc in parse_socs(ctx.options.socs):
                name = f"{stem(component.name, entry)}.{soc.name}.onnx"
                result = probe(graph, soc, context=staging / name, feeds=feeds)
                if not result.ok or result.run_error:
                    why = " | ".join(result.error_lines[:4]) if not result.ok else result.run_error
                    raise ExportError(f"the QNN HTP backend cannot compile {component.name} ({entry}) for "
                                      f"{soc.name}: {why}",
                                      "run `pocketvlm npu-check` on an ONNX export of the model for every op's reason")
                binary = next(p for p in result.context_files if p.suffix == ".bin")
                row = {"model": name, "binary": binary.name, "binary_bytes": binary.stat().st_size,
                       "binary_sha256": sha256_file(binary), "htp_nodes": result.htp_nodes,
                       "total_nodes": result.total, "partitions": result.partitions,
                       "cpu_ops": result.cpu_ops(), "compile_seconds": result.compile_seconds,
                       "error_vs_fp32_cpu": compare(result.outputs, fp32_cpu)}
                if qdq_cpu is not None:
                    row["error_vs_qdq_cpu"] = compare(result.outputs, qdq_cpu)
                check_emulated(ctx, component.name, entry, soc.name, spec.method,
                               row["error_vs_qdq_cpu" if graph != source else "error_vs_fp32_cpu"])
                contexts.setdefault(soc.name, {"soc_model": soc.model, "htp_arch": soc.arch,
                                               "entries": {}})["entries"][entry] = row
        return {"contexts": contexts, "calibration": len(calibration)}

    def predictor(self) -> Any:
        return None  # the runtime's own QnnSession (the plugin; the HTP emulator on x86_64)

    def describe(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, path: Path, index: int,
                 done: dict[str, Any]) -> dict[str, Any]:
        inputs, outputs = component.signature(ctx.config)
        examples = ctx.state[component.name]["examples"]
        first_soc = next(iter(done["contexts"].values()))
        first = next(iter(first_soc["entries"].values()))
        model = path.parent / first["model"]
        static: dict[str, Any] = {"signatures": {name: {k: list(v.shape) for k, v in feeds.items()}
                                                 for name, feeds in examples.items()}}
        if component.name == "text_decoder":
            image_token = (ctx.metadata[index].get("special_tokens") or {}).get("image_token_id")
            static.update(prefill_length=ctx.options.shapes.prefill_length,
                          kv_capacity=ctx.options.shapes.kv_capacity, image_token_id=image_token)
        else:
            example = next(iter(examples.values()))
            static["loop_inputs"] = [t.name for t in inputs if t.shape and t.shape[0] in LOOP_DIMS
                                     and example[t.name].shape[0] == 1]
        total = sum(row["binary_bytes"] + (path.parent / row["model"]).stat().st_size
                    for soc in done["contexts"].values() for row in soc["entries"].values())
        return {"file": model.name, "sha256": sha256_file(model), "bytes": total, "format": "qnn_context",
                "inputs": [t.to_json() for t in inputs], "outputs": [t.to_json() for t in outputs],
                "quantization": record(spec.method, done["calibration"]), "static": static,
                "qnn": {**versions(), "contexts": done["contexts"]}}


def check_emulated(ctx: ExportContext, component: str, entry: str, soc: str, method: str,
                   errors: dict[str, dict[str, float]]) -> None:
    """Refuse a context whose emulated outputs disagree with the same graph on CPU (the registry's
    ``htp_min_cosine``): the HTP backend would run it on the phone without an error and give other numbers."""
    floor = ctx.family.tolerances.limit("htp_min_cosine", method, "qnn")
    if floor is None:
        return
    bad = {name: err["cosine"] for name, err in errors.items() if err["cosine"] < floor}
    if bad:
        worst = min(bad, key=bad.__getitem__)
        raise ExportError(f"the emulated HTP computes {component} ({entry}) for {soc} differently from the CPU: "
                          f"{worst} cosine {bad[worst]:.4f} < {floor} ({len(bad)} output(s) below), with no error "
                          "from the backend", "report the model config; try --quant fp16 or another --soc, and "
                          "`pocketvlm npu-check` on an ONNX export for the placement")


def stem(component: str, entry: str) -> str:
    return component if entry == component else f"{component}.{entry}"
