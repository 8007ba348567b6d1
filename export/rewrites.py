"""Export-friendly rewrites shared by every family and every target (ONNX now; LiteRT and Core ML reuse them).

Each rewrite is exact (same math, checked against the HF module in tests) and is applied only for the duration of a
forward call through a context manager that restores the original module, so a user's model object is never left
modified.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from pocketvlm.runtime.errors import UnsupportedModelError


class PatchEmbeddingAsMatMul(torch.nn.Module):
    """A ViT patch ``Conv2d`` (kernel == stride, no padding) as reshape + MatMul.

    Weight-only and dynamic quantizers (ONNX MatMulNBits / dynamic int8, LiteRT, Core ML) and phone NPUs handle
    MatMul everywhere, while a quantized Conv (ConvInteger) is missing from most mobile execution providers.
    """

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != conv.stride or conv.padding not in ((0, 0), "valid") or conv.groups != 1:
            raise UnsupportedModelError("the patch embedding is not a non-overlapping, unpadded, ungrouped Conv2d",
                                        "report the model config: this family's export rewrite assumes one")
        self.patch_h, self.patch_w = conv.kernel_size
        self.out_channels = conv.out_channels
        self.proj = torch.nn.Linear(conv.in_channels * self.patch_h * self.patch_w, conv.out_channels,
                                    bias=conv.bias is not None)
        with torch.no_grad():
            self.proj.weight.copy_(conv.weight.reshape(conv.out_channels, -1))
            if conv.bias is not None:
                self.proj.bias.copy_(conv.bias)

    @property
    def weight(self) -> torch.Tensor:  # HF embeddings read patch_embedding.weight.dtype
        return self.proj.weight

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = pixels.shape
        grid_h, grid_w = height // self.patch_h, width // self.patch_w
        patches = pixels.reshape(batch, channels, grid_h, self.patch_h, grid_w, self.patch_w)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, grid_h * grid_w, -1)
        return self.proj(patches).transpose(1, 2).reshape(batch, self.out_channels, grid_h, grid_w)


@contextlib.contextmanager
def swapped(parent: torch.nn.Module, name: str, replacement: torch.nn.Module) -> Iterator[None]:
    """Temporarily replace ``parent.<name>``; always restores the original."""
    original = getattr(parent, name)
    setattr(parent, name, replacement)
    try:
        yield
    finally:
        setattr(parent, name, original)


@contextlib.contextmanager
def swapped_attribute(owner: object, name: str, value: object) -> Iterator[None]:
    """Temporarily shadow a method or attribute on one instance; removes the shadow afterwards (the class's own
    attribute shows through again, as before)."""
    had = name in vars(owner)
    original = vars(owner).get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had:
            setattr(owner, name, original)
        else:
            delattr(owner, name)


GROUPED_ATTENTION = "pocketvlm_grouped"


def grouped_query_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                            **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention without ``repeat_kv``: the query heads of each KV head are folded into its rows
    (``[b, kv, groups * s, d]``), so keys and values are read as they are instead of being copied ``groups`` times.

    Same math as eager attention. Exported, the eager form expands the whole KV cache of every layer on every decode
    step: on Qwen2-VL-2B (12 query / 2 KV heads) that is 60 Expand nodes and 2.6 ms of a 46 ms int4 decode step here.
    """
    batch, heads, steps, dim = query.shape
    kv_heads, total = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    q = query.reshape(batch, kv_heads, groups * steps, dim)
    weights = torch.matmul(q, key.transpose(2, 3)) * scaling  # [b, kv, groups * s, T]
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :total]
        if mask.shape[1] == 1:  # the usual [b, 1, s, T] mask, tiled over the folded rows: every tensor stays rank 4,
            weights = weights + mask.repeat(1, 1, groups, 1)  # which GPU and NNAPI delegates require
        else:
            weights = (weights.reshape(batch, kv_heads, groups, steps, total)
                       + mask.reshape(batch, kv_heads, groups, steps, total)).reshape(batch, kv_heads, groups * steps,
                                                                                       total)
    weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).reshape(batch, heads, steps, dim)
    return output.transpose(1, 2).contiguous(), weights.reshape(batch, heads, steps, total)


# fp16 graphs (Core ML): eager masks hold float32's minimum, which is -inf in fp16, so a query row with every key
# masked (a padding token in a prompt's first chunk) softmaxes -inf - -inf = NaN, and the NaN spreads through its
# keys and values to every row (0 * NaN). Clamped to this floor, such a row is uniform, as in float32 eager.
FP16_MASK_FLOOR = -3.0e4
GROUPED_ATTENTION_FP16 = "pocketvlm_grouped_fp16"


def grouped_query_attention_fp16(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                 value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float,
                                 dropout: float = 0.0, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``grouped_query_attention`` with the additive mask clamped to ``FP16_MASK_FLOOR`` (fp16-safe)."""
    if attention_mask is not None:
        attention_mask = attention_mask.clamp(min=FP16_MASK_FLOOR)
    return grouped_query_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)


@contextlib.contextmanager
def grouped_attention(model: torch.nn.Module, fp16: bool = False) -> Iterator[None]:
    """Export with ``grouped_query_attention`` (``fp16``: its fp16-safe mask variant) wherever the model (or a
    sub-model's config) uses eager attention; restores every config afterwards, so parity still compares against
    transformers' own eager attention."""
    from transformers import AttentionInterface, PretrainedConfig
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    name = GROUPED_ATTENTION_FP16 if fp16 else GROUPED_ATTENTION
    AttentionInterface.register(name, grouped_query_attention_fp16 if fp16 else grouped_query_attention)
    AttentionMaskInterface.register(name, eager_mask)  # masks are built per implementation: eager's
    configs = {id(c): c for m in model.modules() for c in (getattr(m, "config", None),)
               if isinstance(c, PretrainedConfig) and c._attn_implementation == "eager"}
    for config in configs.values():
        config._attn_implementation = name
    try:
        yield
    finally:
        for config in configs.values():
            config._attn_implementation = "eager"
