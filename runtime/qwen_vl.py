"""Qwen2-VL image preprocessing and M-RoPE positions, equal to transformers' ``Qwen2VLImageProcessor`` (PIL backend)
and ``Qwen2VLModel.get_rope_index``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pocketvlm.runtime.errors import ImageError
from pocketvlm.runtime.image import RESAMPLE, rescale_normalize, to_rgb


@dataclass(frozen=True)
class QwenImage:
    pixel_values: np.ndarray  # [patches, C * T * P * P] float32
    vision_position_ids: np.ndarray  # [patches, 2] int64 (row, col), merge-block order
    grid: tuple[int, int]  # (patch rows, patch cols)
    merge_size: int

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] // self.merge_size**2


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Both sides a multiple of ``factor``, area within [min_pixels, max_pixels], aspect ratio kept."""
    if max(height, width) / min(height, width) > 200:
        raise ImageError(f"image aspect ratio {max(height, width) / min(height, width):.0f}:1 is over 200:1",
                         "crop the image to a less extreme shape")
    new_h, new_w = round(height / factor) * factor, round(width / factor) * factor
    if new_h * new_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / beta / factor) * factor)
        new_w = max(factor, math.floor(width / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h, new_w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return new_h, new_w


def vision_position_ids(rows: int, cols: int, merge: int) -> np.ndarray:
    """(row, col) of every patch, ordered merge-block by merge-block as the patches are."""
    row_ids = np.broadcast_to(np.arange(rows)[:, None], (rows, cols))
    col_ids = np.broadcast_to(np.arange(cols)[None, :], (rows, cols))

    def blocks(ids: np.ndarray) -> np.ndarray:
        return ids.reshape(rows // merge, merge, cols // merge, merge).transpose(0, 2, 1, 3).reshape(-1)

    return np.stack([blocks(row_ids), blocks(col_ids)], axis=-1).astype(np.int64)


def preprocess(image: Image.Image, config: dict[str, Any]) -> QwenImage:
    patch, merge, temporal = config["patch_size"], config["merge_size"], config["temporal_patch_size"]
    rgb = to_rgb(image)
    if config.get("fixed_size"):  # static-shape targets (LiteRT): every image to one grid, aspect ratio not kept
        height, width = config["fixed_size"]
    else:
        height, width = smart_resize(rgb.height, rgb.width, patch * merge, config["min_pixels"],
                                     config["max_pixels"])
    array = np.asarray(rgb.resize((width, height), resample=RESAMPLE[config["resample"]]))
    chw = rescale_normalize(array, config["rescale_factor"], config["mean"], config["std"]).transpose(2, 0, 1)
    rows, cols = height // patch, width // patch
    patches = chw.reshape(3, rows // merge, merge, patch, cols // merge, merge, patch)
    patches = patches.transpose(1, 4, 2, 5, 0, 3, 6)  # block row, block col, row in block, col in block, C, P, P
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], temporal, patch, patch))
    flat = np.ascontiguousarray(patches.reshape(rows * cols, 3 * temporal * patch * patch), dtype=np.float32)
    return QwenImage(flat, vision_position_ids(rows, cols, merge), (rows, cols), merge)


def mrope_positions(input_ids: np.ndarray, image_token_id: int, images: list[QwenImage]) -> tuple[np.ndarray, int]:
    """[3, 1, seq] positions for one prompt and the delta that decode steps add to their 1-D position."""
    positions = np.zeros((3, len(input_ids)), dtype=np.int64)
    cursor, index, pending = 0, 0, iter(images)
    while index < len(input_ids):
        if input_ids[index] == image_token_id:
            image = next(pending)
            rows, cols = image.grid[0] // image.merge_size, image.grid[1] // image.merge_size
            positions[0, index : index + rows * cols] = cursor
            positions[1, index : index + rows * cols] = cursor + np.repeat(np.arange(rows), cols)
            positions[2, index : index + rows * cols] = cursor + np.tile(np.arange(cols), rows)
            index += rows * cols
            cursor += max(rows, cols)
        else:
            positions[:, index] = cursor
            cursor += 1
            index += 1
    delta = int(positions.max()) + 1 - len(input_ids) if len(input_ids) else 0
    return positions[:, None, :], delta


def window_layout(rows: int, cols: int, merge: int, window_size: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen2.5-VL windows: ``window_index`` orders the merged tokens window by window (row-major windows of
    window_size / merge / patch tokens a side, edge windows smaller); ``window_ids`` gives each patch its window, in
    that order."""
    side = window_size // merge // patch
    grid_h, grid_w = rows // merge, cols // merge
    index = np.arange(grid_h * grid_w).reshape(grid_h, grid_w)
    order, sizes = [], []
    for top in range(0, grid_h, side):
        for left in range(0, grid_w, side):
            block = index[top : top + side, left : left + side].reshape(-1)
            order.append(block)
            sizes.append(block.size)
    window_ids = np.repeat(np.arange(len(sizes)), np.asarray(sizes) * merge * merge)
    return np.concatenate(order).astype(np.int64), window_ids.astype(np.int64)


def position_table_taps(positions: np.ndarray, rows: int, cols: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen3-VL: bilinear (align_corners) taps and weights into the ``side`` x ``side`` learned position table for
    each patch at (row, col) of a ``rows`` x ``cols`` grid -> ([patches, 4] int64, [patches, 4] float32)."""

    def axis(index: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
        floor = np.floor(src)
        offsets = np.arange(2)
        taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
        weights = np.clip(1 - np.abs(src[:, None] - floor[:, None] - offsets), 0, None).astype(np.float32)
        return taps, weights

    h_taps, h_weights = axis(positions[:, 0], rows)
    w_taps, w_weights = axis(positions[:, 1], cols)
    indices = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    weights = (h_weights[:, :, None] * w_weights[:, None, :]).reshape(-1, 4)
    return indices.astype(np.int64), weights.astype(np.float32)


class QwenAdapter:
    """What the generic VLM loop needs from the Qwen families: preprocessing, prompt expansion, vision-encoder feeds
    and M-RoPE positions."""

    SPECIAL = ("image_token", "image_token_id")  # the manifest's special tokens this adapter reads

    def __init__(self, config: dict[str, Any], special: dict[str, Any]) -> None:
        missing = [key for key in self.SPECIAL if key not in special]
        if missing:  # read at load, not at the first request (the VLM's reading_fields names it)
            raise KeyError(f"special_tokens.{missing[0]}")
        self.config, self.special = config, special

    def preprocess(self, image: Image.Image) -> QwenImage:
        return preprocess(image, self.config)

    def expand(self, text: str, processed: QwenImage) -> str:
        token = self.special["image_token"]
        return text.replace(token, token * processed.num_tokens)

    def vision_feeds(self, processed: QwenImage) -> dict[str, np.ndarray]:
        feeds = {"pixel_values": processed.pixel_values, "vision_position_ids": processed.vision_position_ids}
        window = self.config.get("window")
        if window:  # Qwen2.5-VL: windowed attention layout, computed here rather than in the graph
            feeds["window_index"], feeds["window_ids"] = window_layout(
                *processed.grid, processed.merge_size, window["window_size"], self.config["patch_size"])
        table = self.config.get("position_table")
        if table:  # Qwen3-VL: bilinear taps into the learned position table
            feeds["interp_indices"], feeds["interp_weights"] = position_table_taps(
                processed.vision_position_ids, *processed.grid, table["grid_per_side"])
        return feeds

    def positions(self, input_ids: np.ndarray, processed: QwenImage) -> tuple[np.ndarray, int]:
        return mrope_positions(input_ids, self.special["image_token_id"], [processed] if processed is not None else [])

    @staticmethod
    def step_position(position: int) -> np.ndarray:
        return np.full((3, 1, 1), position, dtype=np.int64)
