"""LiteRT (``.tflite``) conversion of one component with litert-torch, at the static shapes of
``export/static_shapes.py``. The export-friendly wrappers are the families' own, shared with ONNX; grouped-query
attention without ``repeat_kv`` (``rewrites.grouped_attention``) is used for decoders here too."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from pocketvlm.export.hf_quiet import quiet_tool
from pocketvlm.export.rewrites import grouped_attention
from pocketvlm.export.spec import ComponentDef
from pocketvlm.export.static_shapes import named_wrapper
from pocketvlm.export.targets.base import require_tool
from pocketvlm.runtime.errors import ExportError

LIGHTWEIGHT_ABOVE = 500_000_000  # parameters: litert-torch's lazy-constant conversion keeps a 2B model in memory


def convert_component(model: Any, component: ComponentDef, path: Path, examples: dict[str, dict[str, Any]]) -> None:
    """fp32 ``.tflite`` with one signature per entry of ``examples``."""
    import torch

    # the converter's C++ side logs to stderr below Python's reach; keep INFO lines out of the CLI's output
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GLOG_minloglevel", "2")
    litert_torch = require_tool("litert_torch", "tflite", "tflite")
    module, _, _ = named_wrapper(model, component)
    attention = grouped_attention(model) if component.name == "text_decoder" else contextlib.nullcontext()
    params = sum(p.numel() for p in model.parameters())
    try:
        with quiet_tool(), torch.no_grad(), attention:
            converter = litert_torch.Converter()
            for name, feeds in examples.items():
                converter.signature(name, module, sample_kwargs=feeds)
            edge = converter.convert(lightweight_conversion=params > LIGHTWEIGHT_ABOVE)
            edge.export(str(path))
    except Exception as exc:  # litert-torch raises torch.export, MLIR and converter errors of many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"LiteRT conversion of {component.name} failed: {first[:300]}",
                          "report the model config; the ONNX target may support it (--target onnx)") from exc
