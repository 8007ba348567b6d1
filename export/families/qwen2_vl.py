"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): dynamic-resolution ViT with 2-D rotary, 2x2 patch merger, and a
Qwen2 decoder with M-RoPE (3-D positions computed by the runtime)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

from pocketvlm.export.families import decoder, vlm_common
from pocketvlm.export.families.loading import field, hf_loaders, image_processor, normalization
from pocketvlm.export.rewrites import swapped
from pocketvlm.export.spec import ComponentDef, TensorDef


class FullVisionAttention(torch.nn.Module):
    """The vision attention for one image per call: bidirectional over all its patches, or within windows.

    HF splits the sequence by ``cu_seqlens`` with ``.tolist()`` (a data-dependent shape); with one image there is one
    segment, so plain attention is the same math and exports with a dynamic patch count. Windowed blocks (Qwen2.5-VL)
    get a mask built in the graph from ``window_ids`` (the window of each patch, from the runtime) instead of
    ``cu_window_seqlens``: equal ids attend to each other.
    """

    def __init__(self, attention: torch.nn.Module, windowed: bool = False) -> None:
        super().__init__()
        self.attention = attention
        self.windowed = windowed

    def forward(self, hidden_states: torch.Tensor, cu_seqlens: Any = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                window_ids: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

        attn, tokens = self.attention, hidden_states.shape[0]
        qkv = attn.qkv(hidden_states).reshape(tokens, 3, attn.num_heads, -1).permute(1, 0, 2, 3)
        query, key, value = qkv.unbind(0)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # [heads, tokens, head_dim]
        scores = torch.matmul(query, key.transpose(1, 2)) * attn.scaling
        if self.windowed and window_ids is not None:
            same = window_ids[:, None] == window_ids[None, :]
            scores = scores.masked_fill(~same[None], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        return attn.proj(torch.matmul(weights, value).transpose(0, 1).reshape(tokens, -1))


class VisionEncoder(torch.nn.Module):
    """pixel_values [patches, C*T*P*P] + vision_position_ids [patches, 2] (row, col per patch, merge-block order)
    -> image_embeds [patches / merge^2, text hidden]."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.visual = model.model.visual
        self.full_attention = torch.nn.ModuleList(FullVisionAttention(b.attn) for b in self.visual.blocks)

    def forward(self, pixel_values: torch.Tensor, vision_position_ids: torch.Tensor) -> torch.Tensor:
        with contextlib.ExitStack() as stack:
            for block, attention in zip(self.visual.blocks, self.full_attention):
                stack.enter_context(swapped(block, "attn", attention))
            out = self.visual(pixel_values, grid_thw=None, position_ids=vision_position_ids,
                              cu_seqlens=torch.zeros(2, dtype=torch.int32), max_seqlen=pixel_values.shape[0])
        return out.pooler_output


VISION_BOUNDS = lambda config: {"patches": (4, 1 << 20), "image_tokens": (1, 1 << 18)}  # noqa: E731


def vision_signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
    vc = config.vision_config
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    return ((TensorDef("pixel_values", "float32", ("patches", patch_dim)),
             TensorDef("vision_position_ids", "int64", ("patches", 2))),
            (TensorDef("image_embeds", "float32", ("image_tokens", config.text_config.hidden_size)),))


def vision_example(config: Any) -> dict[str, torch.Tensor]:
    from transformers.vision_utils import get_vision_position_ids

    vc = config.vision_config
    grid = torch.tensor([[1, 2 * vc.spatial_merge_size, 3 * vc.spatial_merge_size]])
    patches = int(grid.prod())
    generator = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(patches, vc.in_channels * vc.temporal_patch_size * vc.patch_size**2,
                                        generator=generator),
            "vision_position_ids": get_vision_position_ids(grid, vc.spatial_merge_size)}


def text_decoder(model: Any) -> torch.nn.Module:
    layers = model.config.text_config.num_hidden_layers
    return decoder.CachedTextDecoder(model.model.language_model, model.lm_head, model.config.image_token_id, layers)


def hf_reference_inputs(model: Any, input_ids: torch.Tensor, processed: Any) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.from_numpy(processed.pixel_values),
            "image_grid_thw": torch.tensor([[1, *processed.grid]]),
            "mm_token_type_ids": (input_ids == model.config.image_token_id).to(torch.int32)}


load_model, from_config = hf_loaders("Qwen2VLForConditionalGeneration")


def tiny_config(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab_size: int = 512,
                vision_hidden: int = 32, vision_layers: int = 2, initializer_range: float = 0.5,
                image_token_id: int = 5, vision_start_token_id: int = 3, vision_end_token_id: int = 4,
                video_token_id: int = 6, eos_token_id: int = 2, pad_token_id: int = 0) -> Any:
    from transformers import Qwen2VLConfig

    head_dim = hidden // heads
    section = [head_dim // 8, (head_dim // 2 - head_dim // 8) // 2]
    section.append(head_dim // 2 - sum(section))
    return Qwen2VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=1024, initializer_range=initializer_range, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0},
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=None),
        vision_config=dict(depth=vision_layers, embed_dim=vision_hidden, hidden_size=hidden, num_heads=2, mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           initializer_range=initializer_range),
        image_token_id=image_token_id, vision_start_token_id=vision_start_token_id,
        vision_end_token_id=vision_end_token_id, video_token_id=video_token_id, tie_word_embeddings=True,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id,
    )


def default_processor(config: Any) -> Any:
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 64)


def bundle_metadata(model: Any, model_dir: Path, bundle_dir: Path) -> dict[str, Any]:
    config = model.config
    processor = image_processor(model_dir, lambda: default_processor(config))
    size = processor.size
    image = {"kind": "qwen2_vl", **normalization(processor), "patch_size": int(processor.patch_size),
             "temporal_patch_size": int(processor.temporal_patch_size), "merge_size": int(processor.merge_size),
             "min_pixels": int(field(size, "shortest_edge")),
             "max_pixels": int(field(size, "longest_edge"))}
    special = {"image_token_id": config.image_token_id, "vision_start_token_id": config.vision_start_token_id,
               "vision_end_token_id": config.vision_end_token_id}
    return vlm_common.vlm_metadata(model, model_dir, bundle_dir, image, special, position_ids="mrope",
                                   image_token="<|image_pad|>")


SPEC = vlm_common.vlm_spec(
    sys.modules[__name__], "qwen2_vl",
    ComponentDef("vision_encoder", VisionEncoder, vision_signature, vision_example, VISION_BOUNDS),
    vlm_common.text_decoder_component(text_decoder, mrope=True),
    split_vision=True,
)
