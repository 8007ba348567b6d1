"""The manifest's ``app`` block checked against the runtime it stands in for (export/app_block.py): an app that
concatenates its ids and applies its position rule builds exactly the runtime's prompt, and its vision feeds are
the runtime's for any image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pocketvlm.runtime.vlm import VisionLanguageModel

PROMPTS = ("Describe this image.", "what colour is it?", " lead and trail ", "\u00e9t\u00e9 \u2014 \u732b\U0001f431",
           "<image> spelled in text", "tabs\tand\nnewlines", "1234567890")


def app_prompt(manifest: dict, model: VisionLanguageModel, text: str, with_image: bool) -> tuple[list[int], np.ndarray]:
    """What the app builds: ids by concatenation, positions by the block's rule ([axes, n])."""
    app = manifest["app"]
    slots = app["prompt"]["image" if with_image else "text_only"]
    ids = slots["before"] + model.tokenizer.encode_plain(slots["text_prefix"] + text + slots["text_suffix"]) + \
        slots["after"]
    axes = 3 if manifest["decoder"]["position_ids"] == "mrope" else 1
    if not with_image:
        return ids, np.broadcast_to(np.arange(len(ids)), (axes, len(ids)))
    before = np.asarray(app["positions"]["before"], np.int64)
    tail = np.arange(before.shape[1], len(ids)) + app["positions"]["delta"]
    return ids, np.concatenate([before, np.broadcast_to(tail, (axes, len(tail)))], axis=1)


def assert_app_block_matches_runtime(bundle_dir: Path, photos: dict) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert "app" in manifest, f"{bundle_dir.name}: no app block"
    model = VisionLanguageModel.load(bundle_dir)
    images = [*list(photos.values())[:2], Image.new("RGB", (37, 211), (9, 200, 30))]
    for text in PROMPTS:
        for image in (*images, None):
            ids, processed = model.prepare(image, text)
            positions, delta = model.adapter.positions(ids, processed)
            app_ids, app_positions = app_prompt(manifest, model, text, image is not None)
            assert app_ids == ids.tolist(), (text, image)
            np.testing.assert_array_equal(app_positions, positions.reshape(-1, len(ids)))
            if image is not None:
                assert delta == manifest["app"]["positions"]["delta"]
    ids, _ = model.prepare(images[0], "x")
    assert int((ids == manifest["special_tokens"]["image_token_id"]).sum()) == manifest["app"]["image_tokens"]
    feeds = manifest["app"].get("vision_feeds")
    for image in images:
        expected = model.adapter.vision_feeds(model.adapter.preprocess(image))
        if feeds is None:
            assert set(expected) == {"pixel_values"}
            continue
        data = (bundle_dir / feeds["file"]).read_bytes()
        for tensor in feeds["tensors"]:
            stored = np.frombuffer(data[tensor["offset"]: tensor["offset"] + tensor["bytes"]],
                                   np.dtype(tensor["dtype"]).newbyteorder("<")).reshape(tensor["shape"])
            np.testing.assert_array_equal(stored, expected[tensor["name"]])
        assert {t["name"] for t in feeds["tensors"]} == set(expected) - {"pixel_values"}
