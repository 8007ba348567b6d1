"""Export-friendly rewrites shared by every family and every target (ONNX now; LiteRT and Core ML reuse them).

Each rewrite is exact (same math, checked against the HF module in tests) and is applied only for the duration of a
forward call through a context manager that restores the original module, so a user's model object is never left
modified.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class PatchEmbeddingAsMatMul(torch.nn.Module):
    """A ViT patch ``Conv2d`` (kernel == stride, no padding) as reshape + MatMul.

    Weight-only and dynamic quantizers (ONNX MatMulNBits / dynamic int8, LiteRT, Core ML) and phone NPUs handle
    MatMul everywhere, while a quantized Conv (ConvInteger) is missing from most mobile execution providers.
    """

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != conv.stride or conv.padding not in ((0, 0), "valid") or conv.groups != 1:
            raise ValueError("PatchEmbeddingAsMatMul needs a non-overlapping, unpadded, ungrouped patch Conv2d")
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
