"""Static shapes for the targets that want them (LiteRT, Core ML): the shapes a bundle is converted at, the example
feeds of each signature, and the manifest edits a static bundle needs.

Phone delegates (GPU, NNAPI/NPU, the Neural Engine) want static shapes, so every signature is static, batch 1:

- encoders: one signature named after the component; the runtime loops over rows of a larger batch (``batch``,
  ``tiles``). Text encoders take the tokenizer's ``max_length`` (the bundle pads to it).
- Qwen-family vision encoders: every image is resized to one ``image_size`` square grid (recorded in the manifest's
  preprocessing as ``fixed_size``); the example feeds come from the runtime's own preprocessing of such an image, so
  the grid-dependent inputs (positions, windows, interpolation taps) are exactly the ones the runtime will feed.
- split vision stages (``--split-vision``): each stage's feeds follow from the whole component's (the frontend takes
  its share of them, the transformer ``vision_hidden`` at the shape they imply plus the rest), at batch / tile 1
  where the runtime loops.
- ``text_decoder``: ``prefill_N`` and ``decode`` signatures sharing one set of weights, with a KV cache of
  ``kv_capacity`` slots.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.spec import ComponentDef, TensorDef
from pocketvlm.runtime.errors import ExportError
from pocketvlm.runtime.vlm import ADAPTERS

LOOP_DIMS = ("batch", "tiles")  # axis-0 dims the runtime loops over at batch 1


@dataclass(frozen=True)
class StaticShapes:
    """The static shapes of a LiteRT or Core ML bundle (``--shapes FILE``: a JSON object with any of these keys)."""

    prefill_length: int = 128
    kv_capacity: int = 1024
    image_size: int = 448

    def __post_init__(self) -> None:
        if self.prefill_length < 2:
            raise ExportError(f"prefill_length {self.prefill_length} is below 2 (decode already covers 1 token)",
                              "set prefill_length to 2 or more, e.g. 128")
        if self.kv_capacity < self.prefill_length:
            raise ExportError(f"kv_capacity {self.kv_capacity} is smaller than prefill_length {self.prefill_length}",
                              "raise kv_capacity or lower prefill_length")

    @classmethod
    def load(cls, path: Path | str | None) -> StaticShapes:
        if path is None:
            return cls()
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read static shapes from {path}: {exc}",
                              'pass a JSON file like {"prefill_length": 128, "kv_capacity": 1024}') from exc
        unknown = sorted(set(data) - set(asdict(cls())))
        if unknown:
            raise ExportError(f"unknown static-shape setting(s) {unknown} in {path}",
                              f"use only {sorted(asdict(cls()))}")
        return cls(**{k: int(v) for k, v in data.items()})


def prepare_static_bundles(metadata: list[dict[str, Any]], shapes: StaticShapes, config: Any) -> None:
    """Each bundle's metadata edited for a static-shape target (see ``prepare_metadata``)."""
    vision = getattr(config, "vision_config", None)
    multiple = getattr(vision, "patch_size", 0) * getattr(vision, "spatial_merge_size", 0) or None
    for extra in metadata:
        prepare_metadata(extra, shapes, multiple)


def prepare_metadata(metadata: dict[str, Any], shapes: StaticShapes, patch_multiple: int | None) -> None:
    """Bundle metadata edits a static-shape bundle needs: fixed image grid, tokenizer padded to max_length."""
    image = metadata.get("preprocessing", {}).get("image", {})
    if image.get("kind") == "qwen2_vl":
        if patch_multiple and shapes.image_size % patch_multiple:
            raise ExportError(f"image_size {shapes.image_size} is not a multiple of {patch_multiple} (patch x merge)",
                              f"use a multiple of {patch_multiple}, e.g. {patch_multiple * 16}")
        image["fixed_size"] = [shapes.image_size, shapes.image_size]
    if metadata.get("task") == "zero_shot_image_classification":
        metadata["tokenizer"]["padding"] = "max_length"


def dims(tensor: TensorDef, sizes: dict[str, int]) -> list[int]:
    missing = [d for d in tensor.shape if isinstance(d, str) and d not in sizes]
    if missing:
        raise ExportError(f"{tensor.name}: no static size for dim(s) {missing}", "report the model config")
    return [sizes[d] if isinstance(d, str) else int(d) for d in tensor.shape]


def synthetic(tensor: TensorDef, shape: list[int], seed: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    if tensor.name == "attention_mask":
        return torch.ones(shape, dtype=torch.int64)
    if tensor.name == "position_ids":
        return torch.arange(shape[-1]).expand(*shape).contiguous()
    if tensor.dtype == "int64":
        return torch.randint(0, 2, shape, generator=generator)
    return torch.randn(shape, generator=generator)


def decoder_examples(component: ComponentDef, config: Any, shapes: StaticShapes) -> dict[str, dict[str, Any]]:
    in_defs, _ = component.signature(config)
    examples = {}
    for name, new in ((f"prefill_{shapes.prefill_length}", shapes.prefill_length), ("decode", 1)):
        sizes = {"batch": 1, "sequence": new, "past": shapes.kv_capacity, "image_tokens": new,
                 "past_sequence": shapes.kv_capacity + new}
        examples[name] = {t.name: synthetic(t, dims(t, sizes), i) for i, t in enumerate(in_defs)}
    return examples


def vision_examples(component: ComponentDef, config: Any, metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The runtime's own feeds for a mid-grey image at the bundle's fixed size (one tile where it loops)."""
    import torch
    from PIL import Image

    image_config = metadata["preprocessing"]["image"]
    adapter = ADAPTERS[image_config["kind"]](image_config, metadata["special_tokens"])
    side = image_config.get("fixed_size", [image_config.get("tile_size", 224)] * 2)
    feeds = adapter.vision_feeds(adapter.preprocess(Image.new("RGB", (side[1], side[0]), (128, 128, 128))))
    whole = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in feeds.items()}
    if component.stage_feeds is not None:  # a split stage: its feeds follow from the whole component's
        whole = component.stage_feeds(config, whole)
    in_defs, _ = component.signature(config)
    example = {}
    for tensor in in_defs:
        value = whole[tensor.name]
        example[tensor.name] = value[:1] if tensor.shape and tensor.shape[0] in LOOP_DIMS else value
    return {component.name: example}


def encoder_examples(component: ComponentDef, config: Any, metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    in_defs, _ = component.signature(config)
    sizes = {"batch": 1, "tiles": 1, "sequence": int(metadata["tokenizer"]["max_length"])}
    return {component.name: {t.name: synthetic(t, dims(t, sizes), i) for i, t in enumerate(in_defs)}}


def static_examples(component: ComponentDef, config: Any, metadata: dict[str, Any],
                    shapes: StaticShapes) -> dict[str, dict[str, Any]]:
    """Signature name -> example feeds (static shapes) for one component."""
    if component.name == "text_decoder":
        return decoder_examples(component, config, shapes)
    if metadata.get("task") == "image_text_to_text":
        return vision_examples(component, config, metadata)
    return encoder_examples(component, config, metadata)


def named_module(module: Any, in_defs: tuple[TensorDef, ...], out_defs: tuple[TensorDef, ...]) -> Any:
    """The wrapper with named keyword inputs and a dict of named outputs: the .tflite signatures carry the names."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
            outputs = self.inner(*[feeds[t.name] for t in in_defs])
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            return {t.name: value for t, value in zip(out_defs, outputs, strict=True)}

    return Named().eval()


def named_wrapper(model: Any, component: ComponentDef) -> tuple[Any, tuple[TensorDef, ...], tuple[TensorDef, ...]]:
    """The component's export wrapper with named inputs and outputs, and its declared input / output tensors."""
    in_defs, out_defs = component.signature(model.config)
    return named_module(component.wrap(model).eval(), in_defs, out_defs), in_defs, out_defs
