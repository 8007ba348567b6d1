"""Idefics3 / SmolVLM image preprocessing (with image splitting) and prompt expansion, equal to transformers'
``Idefics3ImageProcessor`` (PIL backend) and ``Idefics3Processor``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pocketvlm.runtime.image import RESAMPLE, rescale_normalize, to_rgb

MAX_IMAGE_SIZE = 4096  # transformers' absolute cap on the longest edge


@dataclass(frozen=True)
class TiledImage:
    pixel_values: np.ndarray  # [tiles, 3, tile, tile] float32: the row-major crops, then the global image
    rows: int  # 0 when the image was not split
    cols: int


def _fit_longest_edge(height: int, width: int, longest: int) -> tuple[int, int]:
    """Longest edge to ``longest`` (other side even), then capped at MAX_IMAGE_SIZE."""
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        height, width = longest, int(longest * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def _multiple_of_tile(height: int, width: int, tile: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def preprocess(image: Image.Image, config: dict[str, Any]) -> TiledImage:
    resample = RESAMPLE[config["resample"]]
    tile = config["tile_size"]
    rgb = to_rgb(image)
    height, width = _fit_longest_edge(rgb.height, rgb.width, config["longest_edge"])
    resized = rgb.resize((width, height), resample=resample)
    frames: list[Image.Image]
    rows = cols = 0
    if config["split"]:
        height, width = _multiple_of_tile(height, width, tile)
        resized = resized.resize((width, height), resample=resample)
        if height > tile or width > tile:
            rows, cols = (height - tile) // tile + 1, (width - tile) // tile + 1
            frames = [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
                      for r in range(rows) for c in range(cols)]
            frames.append(resized.resize((tile, tile), resample=resample))
        else:
            frames = [resized]
    else:
        frames = [resized.resize((tile, tile), resample=resample)]
    tiles = [rescale_normalize(np.asarray(f), config["rescale_factor"], config["mean"], config["std"]) for f in frames]
    return TiledImage(np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2), dtype=np.float32), rows, cols)


class Idefics3Adapter:
    """What the generic VLM loop needs from Idefics3 / SmolVLM: tiled preprocessing, the row/column prompt layout,
    and plain 1-D positions."""

    SPECIAL = ("fake_image_token", "image_token", "global_image_token")  # special tokens this adapter reads

    def __init__(self, config: dict[str, Any], special: dict[str, Any]) -> None:
        missing = [key for key in self.SPECIAL if key not in special]
        if missing:  # read at load, not at the first request (the VLM's reading_fields names it)
            raise KeyError(f"special_tokens.{missing[0]}")
        self.config, self.special = config, special

    def preprocess(self, image: Image.Image) -> TiledImage:
        return preprocess(image, self.config)

    def expand(self, text: str, processed: TiledImage) -> str:
        special = self.special
        fake, image, glob = special["fake_image_token"], special["image_token"], special["global_image_token"]
        run = image * self.config["image_seq_len"]
        if processed.rows == 0 and processed.cols == 0:
            replacement = f"{fake}{glob}{run}{fake}"
        else:
            replacement = "".join(
                "".join(f"{fake}<row_{r + 1}_col_{c + 1}>{run}" for c in range(processed.cols)) + "\n"
                for r in range(processed.rows))
            replacement += f"\n{fake}{glob}{run}{fake}"
        return text.replace(image, replacement, 1)

    @staticmethod
    def vision_feeds(processed: TiledImage) -> dict[str, np.ndarray]:
        return {"pixel_values": processed.pixel_values}

    @staticmethod
    def positions(input_ids: np.ndarray, processed: TiledImage) -> tuple[np.ndarray, int]:
        return np.arange(len(input_ids), dtype=np.int64)[None, :], 0

    @staticmethod
    def step_position(position: int) -> np.ndarray:
        return np.full((1, 1), position, dtype=np.int64)
