"""PIL's antialiased resize, as graph ops, over the sample grid MediaPipe's ``ImageEmbedder`` fills: for the MediaPipe
variant, whose input is about ``factor`` times the image tower's size so that MediaPipe's own bilinear stretch (no
antialiasing) aliases less and the rest of the downscale is PIL's.

MediaPipe (1.2.2, CPU) samples its region of interest at ``left + j * width / S`` (pixel indices, j = 0..S-1: the
grid starts on the region's first pixel centre, not half a step in) and rounds to 8 bits. A fixed graph cannot undo
that half-step, which in source pixels depends on the image's size, and MediaPipe refuses a region outside the
image, so the variant's input is ``S = factor * size - 1`` samples and the app's region of interest is chosen so
that sample j falls at ``(j + 1) / (factor * size)`` of the crop window for any image (``mediapipe.roi_rect``):
the corners of a ``factor * size`` grid, minus the crop's edge. On that grid PIL's filter (widened by the scale, as
its ``precompute_coeffs`` does for a downscale; taps outside the window dropped and the rest renormalised) has the
same taps for every output pixel, shifted by ``factor``: one strided depthwise convolution per axis over a
zero-padded input, divided by each output's own tap sum.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _bilinear(x: float) -> float:
    return max(1.0 - abs(x), 0.0)


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x *= math.pi
    return math.sin(x) / x * (0.54 + 0.46 * math.cos(x))


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def _sinc(x: float) -> float:
    return 1.0 if x == 0.0 else math.sin(math.pi * x) / (math.pi * x)


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3.0) if -3.0 < x < 3.0 else 0.0


# PIL's filters and their supports (nearest has none: PIL does not antialias it)
FILTERS = {"box": (_box, 0.5), "bilinear": (_bilinear, 1.0), "hamming": (_hamming, 1.0),
           "bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0)}


def taps(resample: str, factor: int, size: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(first tap's offset from ``i * factor``, the taps, each of the ``size`` outputs' sum of in-window taps) of
    PIL's ``resample`` filter (one of ``FILTERS``) from ``factor * size - 1`` samples at ``(j + 1) / (factor * size)``
    of the window to ``size`` outputs centred at ``(i + 0.5) / size``."""
    kernel, support = FILTERS[resample]
    reach, centre = support * factor, factor / 2 - 1  # sample i * factor + d is (d - centre) / factor outputs away
    first, last = math.ceil(centre - reach), math.floor(centre + reach)
    # symmetrised: box's half-open edge (-0.5, 0.5] would count a sample on a bin edge for one side only
    weights = np.array([(kernel((d - centre) / factor) + kernel((centre - d) / factor)) / 2
                        for d in range(first, last + 1)])
    samples = factor * size - 1
    sums = np.array([sum(w for d, w in zip(range(first, last + 1), weights, strict=True)
                         if 0 <= i * factor + d < samples) for i in range(size)])
    return first, weights, sums


def pil_resize_module(resample: str, factor: int, height: int, width: int) -> Any:
    """torch module: [N, C, factor * height - 1, factor * width - 1] (the grid of ``taps``) -> [N, C, height,
    width], PIL's ``resample``."""
    import torch
    import torch.nn.functional as F

    axes = [taps(resample, factor, size) for size in (height, width)]

    class PILResize(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            (self.top, rows, row_sums), (self.left, cols, col_sums) = axes
            self.rows, self.cols = len(rows), len(cols)
            self.register_buffer("row_taps", torch.tensor(rows, dtype=torch.float32).view(1, 1, -1, 1))
            self.register_buffer("col_taps", torch.tensor(cols, dtype=torch.float32).view(1, 1, 1, -1))
            self.register_buffer("row_sums", torch.tensor(row_sums, dtype=torch.float32).view(1, 1, -1, 1))
            self.register_buffer("col_sums", torch.tensor(col_sums, dtype=torch.float32).view(1, 1, 1, -1))

        def forward(self, planes: torch.Tensor) -> torch.Tensor:
            channels = planes.shape[1]
            # output i's taps start at sample i * factor + first: pad so that they are all in range
            pad_w = (-self.left, (width - 1) * factor + self.left + self.cols - (width * factor - 1))
            pad_h = (-self.top, (height - 1) * factor + self.top + self.rows - (height * factor - 1))
            x = F.pad(planes, (*pad_w, *pad_h))
            x = F.conv2d(x, self.col_taps.expand(channels, 1, 1, self.cols), stride=(1, factor), groups=channels)
            x = x / self.col_sums
            x = F.conv2d(x, self.row_taps.expand(channels, 1, self.rows, 1), stride=(factor, 1), groups=channels)
            return x / self.row_sums

    return PILResize().eval()
