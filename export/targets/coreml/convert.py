"""Core ML (``.mlpackage`` mlprogram) conversion of one encoder component with coremltools.

- Conversion: the family's export-friendly wrapper (shared with ONNX and LiteRT) goes through ``torch.export`` and
  ``coremltools.convert`` as an mlprogram for iOS 18 with fp16 compute, at static shapes (the LiteRT target's:
  encoders at batch 1, text encoders at the tokenizer's ``max_length``, Qwen-family vision at one image grid), which
  is what the Neural Engine wants. ``torch.export`` leaves ``aten.alias`` nodes that coremltools 9.0 does not
  translate; they are removed first (an alias is its input).
- Each component can convert in its own process (``isolate.py``), so the peak memory of a large model's conversion is
  one component's, and a crash in coremltools cannot take the parent's staging directories with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.spec import ComponentDef
from pocketvlm.export.static_shapes import named_wrapper
from pocketvlm.export.targets.base import require_tool
from pocketvlm.export.targets.coreml.common import DEFAULT_TARGET, compute_precision, ct_dtype, quiet, strip_aliases
from pocketvlm.runtime.errors import ExportError


def convert_component(model: Any, component: ComponentDef, path: Path, feeds: dict[str, Any],
                      deployment_target: str = DEFAULT_TARGET) -> None:
    """fp16-compute mlprogram of ``component`` at the static shapes of ``feeds`` (name -> example tensor)."""
    import torch

    ct = require_tool("coremltools", "coreml", "coreml")
    module, in_defs, out_defs = named_wrapper(model, component)
    try:
        with quiet(), torch.no_grad():
            program = torch.export.export(module, (), {k: feeds[k] for k in (t.name for t in in_defs)})
            program = strip_aliases(program.run_decompositions())
            inputs = [ct.TensorType(name=t.name, shape=tuple(feeds[t.name].shape), dtype=ct_dtype(feeds[t.name].dtype))
                      for t in in_defs]
            outputs = [ct.TensorType(name=t.name, dtype=np.float32) for t in out_defs]
            mlmodel = ct.convert(program, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                                 minimum_deployment_target=getattr(ct.target, deployment_target),
                                 compute_precision=compute_precision(ct), skip_model_load=True)
            mlmodel.save(str(path))
    except Exception as exc:  # torch.export and coremltools raise many types (NotImplementedError for unknown ops)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"Core ML conversion of {component.name} failed: {first[:300]}",
                          "report the model config; the ONNX target may support it (--target onnx)") from exc
