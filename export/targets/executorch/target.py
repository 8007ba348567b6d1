"""The ExecuTorch target: one ``.pte`` program per component (method ``forward``), lowered to XNNPACK.

Encoders (and the two vision stages of ``--split-vision``) run at the LiteRT target's static shapes (batch 1, the
runtime loops over rows); the ``text_decoder`` keeps
its KV cache in float32 mutable buffers and takes 1 to ``prefill_length`` new tokens per call (``lower.py``). The
loop releases the torch model after ``convert``, so each component is lowered there, into ``scratch``, and copied into
every bundle by ``quantize`` (fp32 only for now). The manifest records, per component, the delegation report read
before ``to_executorch``. A ``.pte`` runs through ``executorch.runtime`` (``predictor.py``), on the export side:
ExecuTorch's Python bindings link torch, which the runtime never imports.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.spec import ComponentDef
from pocketvlm.export.static_shapes import LOOP_DIMS, prepare_static_bundles, static_examples
from pocketvlm.export.targets.base import Capabilities, ExportContext, ExportOptions
from pocketvlm.export.targets.coreml.decoder import decoder_feeds, decoder_inputs
from pocketvlm.export.targets.executorch.lower import lower_component
from pocketvlm.export.targets.executorch.predictor import local_predictor
from pocketvlm.runtime.manifest import sha256_file

DECODER = "text_decoder"
BUFFERS = ("key_cache", "value_cache")


class ExecuTorchTarget:
    name, title, precision, suffix = "executorch", "ExecuTorch", "fp32", ".pte"
    capabilities: Capabilities = {"fp32": {}}
    calibrates_on_model, splits_vision, mediapipe_variants = False, True, False

    def check(self, spec: QuantSpec, component: str, options: ExportOptions) -> None:
        return None  # the capability table says it all (fp32)

    def prepare(self, ctx: ExportContext) -> None:
        prepare_static_bundles(ctx.metadata, ctx.options.shapes, ctx.config)

    def convert(self, ctx: ExportContext, component: ComponentDef) -> None:
        shapes = ctx.options.shapes
        if component.name == DECODER:
            feeds = None
            ctx.state[DECODER] = decoder_feeds(component, ctx.config, shapes.prefill_length, shapes.kv_capacity)
        else:
            feeds = next(iter(static_examples(component, ctx.config, ctx.metadata[0], shapes).values()))
            ctx.state[component.name] = feeds
        report = lower_component(ctx.model, component, ctx.scratch / f"{component.name}{self.suffix}", feeds,
                                 shapes.prefill_length, shapes.kv_capacity)
        ctx.state[f"{component.name}.delegation"] = report

    def calibrate(self, ctx: ExportContext, component: ComponentDef, feeds: Any) -> Any:
        return None  # no calibrated method in the table yet

    def quantize(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, dest: Path,
                 stats: Any) -> dict[str, Any]:
        shutil.copyfile(ctx.scratch / f"{component.name}{self.suffix}", dest)
        return {}

    def predictor(self) -> Any:
        """``executorch.runtime`` for ``.pte`` files (the export side's own predictor)."""
        return local_predictor()

    def describe(self, ctx: ExportContext, component: ComponentDef, spec: QuantSpec, path: Path, index: int,
                 done: dict[str, Any]) -> dict[str, Any]:
        inputs, outputs = component.signature(ctx.config)
        feeds, shapes = ctx.state[component.name], ctx.options.shapes
        record: dict[str, Any] = {
            "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "format": "pte",
            "inputs": [t.to_json() for t in inputs], "outputs": [t.to_json() for t in outputs],
            "quantization": {"method": "fp32", "weights": "float32", "activations": "float32"},
            "executorch": {"method": "forward", "backends": ["xnnpack"]},
            "delegation": ctx.state[f"{component.name}.delegation"]}
        static: dict[str, Any] = {"signatures": {"forward": {k: list(v.shape) for k, v in feeds.items()}},
                                  "dtypes": {k: _dtype(v) for k, v in feeds.items()}}
        if component.name == DECODER:
            image_token = (ctx.metadata[index].get("special_tokens") or {}).get("image_token_id")
            record["inputs"] = [t.to_json() for t in decoder_inputs(component, ctx.config)]
            record["outputs"] = [outputs[0].to_json()]
            static.update(kv_capacity=shapes.kv_capacity, prefill_length=shapes.prefill_length,
                          image_token_id=image_token, mutable_buffers=list(BUFFERS),
                          kv_cache="mutable buffers key_cache / value_cache "
                                   "[layers, 1, kv_heads, kv_capacity, head_dim], float32; the sequence is dynamic "
                                   "(1 to prefill_length new tokens per call, signatures at the upper bound)")
        else:
            static["loop_inputs"] = [t.name for t in inputs if t.shape and t.shape[0] in LOOP_DIMS
                                     and feeds[t.name].shape[0] == 1]
        return {**record, "static": static}


def _dtype(value: Any) -> str:
    return {"torch.int64": "int64", "torch.int32": "int32"}.get(str(value.dtype), "float32")
