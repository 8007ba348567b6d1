"""fp32 ONNX export of one component with ``torch.onnx.export(dynamo=True)``."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from pocketvlm.export.registry import ComponentDef
from pocketvlm.runtime.errors import ExportError

OPSET = 18  # ORT mobile / web builds support it; nothing our graphs need is newer


def dynamic_shapes(component: ComponentDef, config: Any, module: torch.nn.Module) -> tuple:
    """Symbolic dim names in the component signature -> shared ``torch.export.Dim`` objects, laid out like the
    wrapper's positional parameters (trailing ``*args`` such as flat KV caches grouped in one tuple). A bound of
    ``None`` means ``Dim.AUTO``: a dim the exporter derives from the others (an attention mask of past + new)."""
    in_defs, _ = component.signature(config)
    bounds = component.dim_bounds(config)
    dims: dict[str, Any] = {}
    per_input = []
    for tensor in in_defs:
        axes = {}
        for axis, dim in enumerate(tensor.shape):
            if isinstance(dim, str):
                if dim not in dims:
                    bound = bounds.get(dim, (1, 2**20))
                    dims[dim] = torch.export.Dim.AUTO if bound is None else torch.export.Dim(dim, min=bound[0],
                                                                                           max=bound[1])
                axes[axis] = dims[dim]
        per_input.append(axes)
    params = list(inspect.signature(module.forward).parameters.values())
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params) and len(per_input) > len(named):
        return (*per_input[: len(named)], tuple(per_input[len(named):]))
    return tuple(per_input)


@contextlib.contextmanager
def _quiet() -> Any:
    """The dynamo exporter prints progress and warnings per stage; keep the CLI's terminal output ours."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_component(model: Any, component: ComponentDef, path: Path) -> None:
    module = component.wrap(model).eval()
    inputs = component.example_inputs(model.config)
    in_defs, out_defs = component.signature(model.config)
    if list(inputs) != [t.name for t in in_defs]:
        raise ExportError(f"{component.name}: example inputs {list(inputs)} differ from the signature",
                          "fix the family module")
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                module,
                args=tuple(inputs.values()),
                dynamo=True,
                opset_version=OPSET,
                input_names=[t.name for t in in_defs],
                output_names=[t.name for t in out_defs],
                dynamic_shapes=dynamic_shapes(component, model.config, module),
                optimize=True,
                verbose=False,
            )
            program.save(str(path), external_data=None)  # None: weights beside the graph past 2 GB
    except Exception as exc:  # the exporter raises many internal error types; report them as one
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export of {component.name} failed: {first}",
                          "report the model config; try a smaller config to isolate the failing op") from exc
