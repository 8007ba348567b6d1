"""Calibration feeds for the QNN target's static QDQ quantization, built with the runtime's own preprocessing at the
bundle's static shapes: images (``--calibration-images``) for image and vision encoders, one feed per tile;
prompts for text encoders (``--calibration-texts``, else a generic word list in the bundle's prompt template),
padded to the tokenizer's ``max_length`` as a static bundle feeds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.static_shapes import LOOP_DIMS
from pocketvlm.runtime.errors import QuantizationError
from pocketvlm.runtime.image import ImagePreprocess, load_image
from pocketvlm.runtime.text import TextConfig, TextTokenizer
from pocketvlm.runtime.vlm import ADAPTERS

DEFAULT_WORDS = ("cat", "dog", "car", "tree", "house", "person", "bird", "boat", "flower", "cup of coffee",
                 "red circle", "blue square", "green triangle", "yellow star", "white rectangle", "black shape",
                 "mountain", "beach", "city street", "kitchen", "book", "phone", "chair", "table", "bicycle",
                 "airplane", "horse", "apple", "pizza", "clock", "rocket", "computer")
FEEDS = list[dict[str, np.ndarray]]


def image_feeds(component: str, signature: tuple[Any, ...], metadata: dict[str, Any],
                images: tuple[Path, ...]) -> FEEDS:
    image_config = metadata["preprocessing"]["image"]
    feeds: FEEDS = []
    for path in images:
        image = load_image(path)
        if component == "image_encoder":
            feeds.append({"pixel_values": ImagePreprocess.from_json(image_config).batch([image])})
            continue
        adapter = ADAPTERS[image_config["kind"]](image_config, metadata["special_tokens"])
        whole = adapter.vision_feeds(adapter.preprocess(image))
        loop = [t.name for t in signature if t.shape and t.shape[0] in LOOP_DIMS]
        rows = np.shape(whole[loop[0]])[0] if loop else 1
        for row in range(rows):
            feeds.append({t.name: np.ascontiguousarray(whole[t.name][row : row + 1] if t.name in loop
                                                       else whole[t.name]) for t in signature})
    return feeds


def text_feeds(metadata: dict[str, Any], staging: Path, texts: tuple[str, ...]) -> FEEDS:
    config = TextConfig.from_json(metadata["tokenizer"])
    tokenizer = TextTokenizer(staging / config.file, config)
    template = (metadata.get("zero_shot") or {}).get("prompt_template", "{}")
    prompts = list(texts) or [template.format(word) for word in DEFAULT_WORDS]
    return [dict(tokenizer.encode([prompt])) for prompt in prompts]


def calibration_feeds(component: str, signature: tuple[Any, ...], metadata: dict[str, Any], staging: Path,
                      images: tuple[Path, ...], texts: tuple[str, ...]) -> FEEDS:
    if component == "text_encoder":
        return text_feeds(metadata, staging, texts)
    if component in ("image_encoder", "vision_encoder"):
        if not images:
            raise QuantizationError(f"static activation quantization of {component} needs calibration images",
                                    "pass --calibration-images DIR (32 or more representative images)")
        return image_feeds(component, signature, metadata, images)
    raise QuantizationError(f"a16w8 / a8w8 are not offered for {component} on --target qnn in this version",
                            f"use fp16 for {component} (e.g. --quant a16w8,{component}=fp16)")
