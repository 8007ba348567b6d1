"""The vision split point: a family's image / vision component as two stages with one tensor between them.

Each family declares where it splits (``spec.VisionSplit``): the frontend (patch embedding, class token, position
embedding, and whatever else runs before the first encoder layer) -> ``vision_hidden`` -> the transformer (the
encoder layers and everything after them: post-layernorm, pooling head, projection, merger, connector). Chained,
the stages equal the unsplit component; the runtime may run them on different execution providers (e.g. the frontend
on CPU, the transformer on an NPU). This module derives both stages' ComponentDefs from the unsplit one, and holds
the Qwen families' split (patch embedding + learned position table | blocks + merger), which their family modules
ask for with ``split_vision=True``.
"""

from __future__ import annotations

from typing import Any

import torch

from pocketvlm.export.rewrites import swapped
from pocketvlm.export.spec import ComponentDef, FamilySpec, SpecError, TensorDef, VisionSplit
from pocketvlm.runtime.errors import UnsupportedModelError

HIDDEN = "vision_hidden"
TABLE_INPUTS = ("interp_indices", "interp_weights")  # Qwen3-VL's learned position table taps


class Passthrough(torch.nn.Module):
    """Stands in for a module the frontend already ran: returns its first input (extra arguments ignored)."""

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden


# -- the derived stages ------------------------------------------------------------------------------------------------
def hidden_sizes(inputs: tuple[TensorDef, ...], feeds: dict[str, Any]) -> dict[str, int]:
    """The sizes of the symbolic dims of ``inputs`` in ``feeds`` (tensors or arrays of those inputs)."""
    sizes: dict[str, int] = {}
    for tensor in inputs:
        if tensor.name in feeds:
            for axis, dim in enumerate(tensor.shape):
                if isinstance(dim, str):
                    sizes.setdefault(dim, int(feeds[tensor.name].shape[axis]))
    return sizes


def stages(vision: ComponentDef, point: VisionSplit) -> tuple[ComponentDef, ComponentDef]:
    """Frontend and transformer ComponentDefs from the unsplit component and the family's split point."""

    def hidden(config: Any) -> TensorDef:
        return TensorDef(HIDDEN, "float32", point.hidden_shape(config))

    def frontend_signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
        inputs = vision.signature(config)[0]
        return tuple(t for t in inputs if t.name in point.frontend_inputs), (hidden(config),)

    def transformer_signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
        inputs, outputs = vision.signature(config)
        return (hidden(config), *(t for t in inputs if t.name not in point.frontend_inputs)), outputs

    def frontend_feeds(config: Any, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t.name: feeds[t.name] for t in frontend_signature(config)[0]}

    def transformer_feeds(config: Any, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unsplit feeds' other inputs, and a seeded ``vision_hidden`` at the shape those feeds imply."""
        sizes = hidden_sizes(vision.signature(config)[0], feeds)
        shape = [sizes[d] if isinstance(d, str) else d for d in hidden(config).shape]
        example = {HIDDEN: torch.randn(shape, generator=torch.Generator().manual_seed(2))}
        return {**example, **{t.name: feeds[t.name] for t in transformer_signature(config)[0][1:]}}

    frontend_name, transformer_name = point.stages
    frontend = ComponentDef(frontend_name, point.frontend, frontend_signature,
                            lambda config: frontend_feeds(config, vision.example_inputs(config)), vision.dim_bounds,
                            stage_feeds=frontend_feeds)
    transformer = ComponentDef(transformer_name, point.transformer, transformer_signature,
                               lambda config: transformer_feeds(config, vision.example_inputs(config)),
                               vision.dim_bounds, stage_feeds=transformer_feeds)
    return frontend, transformer


def export_components(family: FamilySpec, split_vision: bool = False) -> tuple[ComponentDef, ...]:
    """The family's components, with its vision component replaced by the split point's two stages when
    ``split_vision`` is asked (refused, by name, for a family without a split point)."""
    if not split_vision:
        return family.components
    point = family.vision_split
    if point is None:
        raise UnsupportedModelError(f"family {family.name} has no vision split point", "export without --split-vision")
    parts: list[ComponentDef] = []
    for comp in family.components:
        parts += list(stages(comp, point)) if comp.name == point.component else [comp]
    return tuple(parts)


def component_def(family: FamilySpec, name: str) -> ComponentDef:
    """One of the family's components or split stages, by name (for a conversion in another process)."""
    found = [c for c in family.components if c.name == name]
    if not found and family.split_vision:
        found = [c for c in export_components(family, split_vision=True) if c.name == name]
    if not found:
        raise SpecError(f"family {family.name} has no component or split stage {name!r}")
    return found[0]


# -- the Qwen families' split ------------------------------------------------------------------------------------------
def vision_width(config: Any) -> int:
    vc = config.vision_config
    return int(getattr(vc, "embed_dim", None) or vc.hidden_size)


class VisionFrontend(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.visual = model.model.visual

    def forward(self, pixel_values: torch.Tensor, *table: torch.Tensor) -> torch.Tensor:
        hidden = self.visual.patch_embed(pixel_values)
        if table:
            indices, weights = table
            hidden = hidden + (self.visual.pos_embed(indices) * weights[:, :, None]).sum(1).to(hidden.dtype)
        return hidden


class VisionTransformer(torch.nn.Module):
    """The family's vision encoder from ``vision_hidden`` on: patch embedding swapped for identity, and the position
    table (already added by the frontend) fed zero weights, which adds exactly nothing."""

    def __init__(self, encoder: torch.nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_names = input_names  # the unsplit encoder's inputs, in order

    def forward(self, vision_hidden: torch.Tensor, *others: torch.Tensor) -> Any:
        rest = iter(others)
        args = []
        for name in self.input_names[1:]:
            if name == "interp_indices":
                args.append(torch.zeros(vision_hidden.shape[0], 4, dtype=torch.int64))
            elif name == "interp_weights":
                args.append(torch.zeros(vision_hidden.shape[0], 4, dtype=vision_hidden.dtype))
            else:
                args.append(next(rest))
        with swapped(self.encoder.visual, "patch_embed", torch.nn.Identity()):
            return self.encoder(vision_hidden, *args)


def qwen_sizes(config: Any, metadata: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Patches of square images at 224, 448 and 896 px (and the bundle's fixed size, on a static-shape target)."""
    image = metadata["preprocessing"]["image"]
    patch = int(image["patch_size"])
    sides = [(side, side) for side in (224, 448, 896)]
    if image.get("fixed_size") and tuple(image["fixed_size"]) not in sides:
        sides.append(tuple(image["fixed_size"]))
    return {f"{h}x{w}": {"patches": (h // patch) * (w // patch)} for h, w in sides}


def patch_embed_split(vision: ComponentDef) -> VisionSplit:
    """The Qwen families' split of ``vision_encoder``: patch embedding (+ the learned position table) | the blocks
    with their rotary positions and windows, the merger (+ DeepStack)."""

    def transformer(model: Any) -> torch.nn.Module:
        return VisionTransformer(vision.wrap(model), tuple(t.name for t in vision.signature(model.config)[0]))

    return VisionSplit(
        component="vision_encoder", stages=("vision_frontend", "vision_transformer"),
        frontend=VisionFrontend, transformer=transformer,
        hidden_shape=lambda config: ("patches", vision_width(config)), sizes=qwen_sizes,
        holds=("patch embedding (+ the learned position table, Qwen3-VL)",
               "vision blocks (2-D rotary positions, windows) + patch merger (+ DeepStack mergers)"),
        layout="one image per call, its patches in merge-block order; no mask: the blocks attend within the image "
               "(or within windows given by window_index)",
        frontend_inputs=("pixel_values", *TABLE_INPUTS),
    )
