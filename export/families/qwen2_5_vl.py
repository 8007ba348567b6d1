"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): the Qwen2-VL layout with windowed vision attention (full
attention only in ``fullatt_block_indexes``), RMSNorm / SwiGLU vision blocks, and the same M-RoPE decoder."""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from pathlib import Path
from typing import Any

import torch

from pocketvlm.export.families import qwen2_vl, vlm_common
from pocketvlm.export.families.loading import hf_loaders
from pocketvlm.export.rewrites import swapped, swapped_attribute
from pocketvlm.export.spec import ComponentDef, TensorDef
from pocketvlm.runtime.qwen_vl import window_layout


class VisionEncoder(torch.nn.Module):
    """pixel_values + vision_position_ids + window_index [image_tokens] (merge blocks in window order) + window_ids
    [patches] (window of each patch, in window order) -> image_embeds [image_tokens, text hidden], original order."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.visual = model.model.visual
        full = set(self.visual.fullatt_block_indexes)
        self.attention = torch.nn.ModuleList(qwen2_vl.FullVisionAttention(block.attn, windowed=index not in full)
                                             for index, block in enumerate(self.visual.blocks))

    def forward(self, pixel_values: torch.Tensor, vision_position_ids: torch.Tensor, window_index: torch.Tensor,
                window_ids: torch.Tensor) -> torch.Tensor:
        patches = pixel_values.shape[0]
        dummy = torch.zeros(2, dtype=torch.int32)  # HF's cu_seqlens; the rewritten attention does not read it
        with contextlib.ExitStack() as stack:
            for block, attention in zip(self.visual.blocks, self.attention):
                stack.enter_context(swapped(block, "attn", attention))
            # HF undoes the window order with argsort(window_index); a sort does not lower to LiteRT (its comparator
            # takes 32-bit keys only), and inverting a permutation needs no sort
            stack.enter_context(swapped_attribute(torch, "argsort", inverse_permutation))
            out = self.visual(pixel_values, grid_thw=None, position_ids=vision_position_ids, cu_seqlens=dummy,
                              max_seqlen=patches, window_index=window_index, cu_window_seqlens=dummy,
                              max_window_seqlen=patches, window_ids=window_ids)
        return out.pooler_output


def inverse_permutation(permutation: torch.Tensor) -> torch.Tensor:
    """``argsort`` of a permutation, by matching each position to its slot (no sort; O(n^2) compares over image
    tokens, which stay in the thousands)."""
    slots = torch.arange(permutation.shape[0], dtype=permutation.dtype)
    return (permutation[None, :] == slots[:, None]).to(torch.int32).argmax(dim=-1)


def vision_signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
    (pixels, positions), outputs = qwen2_vl.vision_signature(config)
    return ((pixels, positions, TensorDef("window_index", "int64", ("image_tokens",)),
             TensorDef("window_ids", "int64", ("patches",))), outputs)


def vision_example(config: Any) -> dict[str, torch.Tensor]:
    vc = config.vision_config
    feeds = qwen2_vl.vision_example(config)
    index, ids = window_layout(2 * vc.spatial_merge_size, 3 * vc.spatial_merge_size, vc.spatial_merge_size,
                               vc.window_size, vc.patch_size)
    return {**feeds, "window_index": torch.from_numpy(index), "window_ids": torch.from_numpy(ids)}


load_model, from_config = hf_loaders("Qwen2_5_VLForConditionalGeneration")


@functools.wraps(qwen2_vl.tiny_config, assigned=("__doc__",))
def _tiny_config(**kwargs: Any) -> Any:
    from transformers import Qwen2_5_VLConfig

    base = qwen2_vl.tiny_config(**kwargs).to_dict()
    vision = base["vision_config"]
    vision.update(hidden_size=vision.pop("embed_dim"), out_hidden_size=base["text_config"]["hidden_size"],
                  intermediate_size=2 * vision.get("hidden_size", 32), window_size=56, fullatt_block_indexes=[1])
    for key in ("mlp_ratio", "model_type", "architectures", "transformers_version", "dtype"):
        vision.pop(key, None)
    for key in ("model_type", "architectures", "transformers_version", "dtype"):
        base.pop(key, None)
        base["text_config"].pop(key, None)
    return Qwen2_5_VLConfig(**base)


def tiny_config(**kwargs: Any) -> Any:
    """Qwen2-VL's tiny config (same arguments) moved to the Qwen2.5-VL layout: windows of 2x2 merged tokens, full
    attention in the last of two blocks."""
    return _tiny_config(**kwargs)


tiny_config.__signature__ = inspect.signature(qwen2_vl.tiny_config)  # type: ignore[attr-defined]


default_processor = qwen2_vl.default_processor
hf_reference_inputs = qwen2_vl.hf_reference_inputs


def bundle_metadata(model: Any, model_dir: Path, bundle_dir: Path) -> dict[str, Any]:
    meta = qwen2_vl.bundle_metadata(model, model_dir, bundle_dir)
    vc = model.config.vision_config
    meta["preprocessing"]["image"]["window"] = {"window_size": int(vc.window_size),
                                                "fullatt_block_indexes": list(vc.fullatt_block_indexes)}
    return meta


SPEC = vlm_common.vlm_spec(
    sys.modules[__name__], "qwen2_5_vl",
    ComponentDef("vision_encoder", VisionEncoder, vision_signature, vision_example, qwen2_vl.VISION_BOUNDS),
    vlm_common.text_decoder_component(qwen2_vl.text_decoder, mrope=True),
    split_vision=True,
)
