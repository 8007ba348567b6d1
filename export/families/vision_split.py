"""The split point: a VLM's vision side as two stages at the ViT -> Transformer boundary.

``vision_frontend``: patch embedding (+ the learned position table where the family has one) ->
``vision_hidden`` [patches, vision width]. ``vision_transformer``: the encoder blocks + merger (+ DeepStack) from
``vision_hidden``. Chained, they equal the unsplit ``vision_encoder``; the runtime may run them on different execution
providers (e.g. the frontend on CPU, the transformer on an NPU).
"""

from __future__ import annotations

from typing import Any

import torch

from pocketvlm.export.rewrites import swapped
from pocketvlm.export.spec import ComponentDef, FamilySpec, TensorDef
from pocketvlm.runtime.errors import UnsupportedModelError

TABLE_INPUTS = ("interp_indices", "interp_weights")  # Qwen3-VL's learned position table taps


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


def split(vision: ComponentDef) -> tuple[ComponentDef, ComponentDef]:
    """Frontend and transformer ComponentDefs derived from a family's ``vision_encoder``."""

    def names(config: Any) -> tuple[str, ...]:
        return tuple(t.name for t in vision.signature(config)[0])

    def hidden(config: Any) -> TensorDef:
        return TensorDef("vision_hidden", "float32", ("patches", vision_width(config)))

    def frontend_signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
        inputs = vision.signature(config)[0]
        return tuple(t for t in inputs if t.name == "pixel_values" or t.name in TABLE_INPUTS), (hidden(config),)

    def transformer_signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
        inputs, outputs = vision.signature(config)
        rest = tuple(t for t in inputs if t.name != "pixel_values" and t.name not in TABLE_INPUTS)
        return (hidden(config), *rest), outputs

    def frontend_example(config: Any) -> dict[str, torch.Tensor]:
        feeds = vision.example_inputs(config)
        return {t.name: feeds[t.name] for t in frontend_signature(config)[0]}

    def transformer_example(config: Any) -> dict[str, torch.Tensor]:
        feeds = vision.example_inputs(config)
        patches = feeds["pixel_values"].shape[0]
        example = {"vision_hidden": torch.randn(patches, vision_width(config),
                                                generator=torch.Generator().manual_seed(2))}
        return {**example, **{t.name: feeds[t.name] for t in transformer_signature(config)[0][1:]}}

    frontend = ComponentDef("vision_frontend", VisionFrontend, frontend_signature, frontend_example, vision.dim_bounds)
    transformer = ComponentDef("vision_transformer",
                               lambda model: VisionTransformer(vision.wrap(model), names(model.config)),
                               transformer_signature, transformer_example, vision.dim_bounds)
    return frontend, transformer


def export_components(family: FamilySpec, split_vision: bool = False) -> tuple[ComponentDef, ...]:
    """The family's components, with ``vision_encoder`` replaced by ``vision_frontend`` + ``vision_transformer`` when
    ``split_vision`` is asked (refused, by name, for a family without a split point)."""
    if not split_vision:
        return family.components
    if not family.split_vision:
        raise UnsupportedModelError(f"family {family.name} has no vision split point", "export without --split-vision")
    parts: list[ComponentDef] = []
    for comp in family.components:
        parts += list(split(comp)) if comp.name == "vision_encoder" else [comp]
    return tuple(parts)
