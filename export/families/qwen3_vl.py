"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): ViT with a learned position table resampled to each image's grid,
DeepStack (features of early vision blocks added to the first decoder layers' image positions), interleaved M-RoPE.
onnxruntime-genai drops DeepStack; here the vision encoder returns the stacked features and the decoder adds them."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

from pocketvlm.export.families import decoder, qwen2_vl, vlm_common
from pocketvlm.export.families.loading import hf_loaders
from pocketvlm.export.rewrites import swapped, swapped_attribute
from pocketvlm.export.spec import ComponentDef, TensorDef
from pocketvlm.runtime.qwen_vl import position_table_taps


class VisionEncoder(torch.nn.Module):
    """pixel_values + vision_position_ids + interp_indices / interp_weights [patches, 4] (bilinear taps into the
    learned position table, from the runtime) -> image_embeds [image_tokens, hidden] and deepstack_embeds
    [levels, image_tokens, hidden]."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.visual = model.model.visual
        self.attention = torch.nn.ModuleList(qwen2_vl.FullVisionAttention(b.attn) for b in self.visual.blocks)

    def forward(self, pixel_values: torch.Tensor, vision_position_ids: torch.Tensor, interp_indices: torch.Tensor,
                interp_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with contextlib.ExitStack() as stack:
            for block, attention in zip(self.visual.blocks, self.attention):
                stack.enter_context(swapped(block, "attn", attention))
            out = self.visual(pixel_values, grid_thw=None, position_ids=vision_position_ids,
                              cu_seqlens=torch.zeros(2, dtype=torch.int32), max_seqlen=pixel_values.shape[0],
                              interp_indices=interp_indices, interp_weights=interp_weights)
        return out.pooler_output, torch.stack(list(out.deepstack_features))


def _deepstack_add(hidden: torch.Tensor, is_image: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
    """Export-friendly DeepStack injection: HF indexes with a boolean mask (a data-dependent shape)."""
    rows = decoder.image_rows(is_image, embeds).to(hidden.dtype)
    return hidden + torch.where(is_image[..., None], rows, torch.zeros_like(rows))


class DeepstackTextDecoder(decoder.CachedTextDecoder):
    """The shared text decoder plus ``deepstack_embeds`` [levels, image_tokens, hidden] (one zero row per level on
    decode steps), added to the image positions after the first ``levels`` decoder layers."""

    def forward(self, input_ids: torch.Tensor, image_embeds: torch.Tensor, deepstack_embeds: torch.Tensor,
                position_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor) -> tuple:
        is_image = input_ids == self.image_token_id
        extra = {"visual_pos_masks": is_image, "deepstack_visual_embeds": list(deepstack_embeds.unbind(0))}
        with swapped_attribute(self.language_model, "_deepstack_process", _deepstack_add):
            return self.run(input_ids, image_embeds, position_ids, attention_mask, past, extra)


def vision_signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
    (pixels, positions), (embeds,) = qwen2_vl.vision_signature(config)
    levels = len(config.vision_config.deepstack_visual_indexes)
    hidden = config.text_config.hidden_size
    return ((pixels, positions, TensorDef("interp_indices", "int64", ("patches", 4)),
             TensorDef("interp_weights", "float32", ("patches", 4))),
            (embeds, TensorDef("deepstack_embeds", "float32", (levels, "image_tokens", hidden))))


def vision_example(config: Any) -> dict[str, torch.Tensor]:
    vc = config.vision_config
    feeds = qwen2_vl.vision_example(config)
    side = int(vc.num_position_embeddings**0.5)
    indices, weights = position_table_taps(feeds["vision_position_ids"].numpy(), 2 * vc.spatial_merge_size,
                                           3 * vc.spatial_merge_size, side)
    return {**feeds, "interp_indices": torch.from_numpy(indices), "interp_weights": torch.from_numpy(weights)}


def decoder_signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
    inputs, outputs = decoder.decoder_signature(config.text_config, mrope=True)
    levels = len(config.vision_config.deepstack_visual_indexes)
    deep = TensorDef("deepstack_embeds", "float32", (levels, "image_tokens", config.text_config.hidden_size))
    return (inputs[:2] + (deep,) + inputs[2:], outputs)


def decoder_example(config: Any) -> dict[str, torch.Tensor]:
    feeds = decoder.decoder_example(config.text_config, config.image_token_id, mrope=True)
    levels = len(config.vision_config.deepstack_visual_indexes)
    deep = torch.randn(levels, *feeds["image_embeds"].shape, generator=torch.Generator().manual_seed(1))
    names = list(feeds)
    return {**{k: feeds[k] for k in names[:2]}, "deepstack_embeds": deep, **{k: feeds[k] for k in names[2:]}}


def text_decoder(model: Any) -> torch.nn.Module:
    return DeepstackTextDecoder(model.model.language_model, model.lm_head, model.config.image_token_id,
                                model.config.text_config.num_hidden_layers)


load_model, from_config = hf_loaders("Qwen3VLForConditionalGeneration")


def tiny_config(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab_size: int = 512,
                vision_hidden: int = 32, vision_layers: int = 2, initializer_range: float = 0.5,
                image_token_id: int = 5, vision_start_token_id: int = 3, vision_end_token_id: int = 4,
                video_token_id: int = 6, eos_token_id: int = 2, pad_token_id: int = 0) -> Any:
    from transformers import Qwen3VLConfig

    head_dim = hidden // heads
    section = [head_dim // 4, head_dim // 8, head_dim // 2 - head_dim // 4 - head_dim // 8]
    return Qwen3VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         head_dim=head_dim, max_position_embeddings=1024, initializer_range=initializer_range,
                         tie_word_embeddings=True, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         rope_parameters={"rope_type": "default", "mrope_section": section,
                                          "mrope_interleaved": True, "rope_theta": 10000.0}),
        vision_config=dict(depth=vision_layers, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
                           num_heads=2, out_hidden_size=hidden, patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=16, deepstack_visual_indexes=[0, 1],
                           initializer_range=initializer_range),
        image_token_id=image_token_id, vision_start_token_id=vision_start_token_id,
        vision_end_token_id=vision_end_token_id, video_token_id=video_token_id, tie_word_embeddings=True,
    )


hf_reference_inputs = qwen2_vl.hf_reference_inputs


def default_processor(config: Any) -> Any:
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(patch_size=16, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                 min_pixels=64 * 64, max_pixels=32 * 32 * 64)


def bundle_metadata(model: Any, model_dir: Path, bundle_dir: Path) -> dict[str, Any]:
    meta = qwen2_vl.bundle_metadata(model, model_dir, bundle_dir)
    vc = model.config.vision_config
    meta["preprocessing"]["image"]["position_table"] = {
        "grid_per_side": int(vc.num_position_embeddings**0.5), "mode": "bilinear", "align_corners": True}
    meta["decoder"]["deepstack_levels"] = len(vc.deepstack_visual_indexes)
    return meta


SPEC = vlm_common.vlm_spec(
    sys.modules[__name__], "qwen3_vl",
    ComponentDef("vision_encoder", VisionEncoder, vision_signature, vision_example, qwen2_vl.VISION_BOUNDS),
    ComponentDef("text_decoder", text_decoder, decoder_signature, decoder_example,
                 lambda c: decoder.decoder_bounds(c.text_config)),
    split_vision=True,
)
