"""The manifest's ``app`` block: what a phone app would find hard, resolved at export for VLM bundles whose image
layout is fixed (Idefics3 without image splitting; Qwen bundles with a ``fixed_size`` grid: the LiteRT, Core ML and
QNN targets).

With it an app needs no chat template engine, no image-size logic and no M-RoPE code: it tokenizes the user's text
and concatenates ids the exporter wrote.

- ``prompt``: the rendered chat template cut around the user's text at the nearest added (special) tokens on either
  side: token ids ``before`` (the image placeholder already expanded to the fixed image's tokens, for ``image``) and
  ``after``, and the plain text between them and the user's text (``text_prefix``, ``text_suffix``, often empty; e.g.
  ``"user\n"`` where a template writes a newline before the text). The app tokenizes ``text_prefix + text +
  text_suffix`` in one piece and concatenates: exact, because a tokenizer splits its input at added tokens before
  anything else. Checked on probe prompts; where it does not hold, no block is written.
- ``positions``: the ``before`` tokens' positions (a ``[3, n]`` table for M-RoPE, ``[1, n]`` else), and ``delta``:
  every later token at sequence index i, decode steps included, is at ``i + delta`` on every axis (checked on the
  probes, as is ``i`` for text-only prompts).
- ``vision_feeds``: the vision side's inputs other than ``pixel_values`` / ``vision_hidden`` (Qwen's grid-dependent
  positions, windows and interpolation taps), which are constant for the fixed grid: stored little-endian in
  ``app_vision_feeds.bin`` (listed in ``files`` with its sha256) with each tensor's offset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pocketvlm.runtime.manifest import sha256_file
from pocketvlm.runtime.template import ChatTemplate
from pocketvlm.runtime.text import TextConfig, TextTokenizer
from pocketvlm.runtime.vlm import ADAPTERS

FEEDS_FILE = "app_vision_feeds.bin"
# where the user's text goes while the template is rendered: private-use characters no tokenizer merges with text
MARKER = "\ue000pocketvlm-user-text\ue001"
# prompts the split is checked on: the default caption prompt, a question, spaces at either end, punctuation, digits,
# non-ASCII, an added token's spelling inside the text, and a single character
PROBES = ("Describe this image.", "What colour is the shape?", "  two  spaces  ", "Q: 3+4=?",
          "caf\u00e9 \u732b \U0001f642", "is there an <image> tag", "x")
STATIC_INPUTS = ("pixel_values", "vision_hidden")  # fed per image by the app (vision_hidden: the split stage's own)


def fixed_image(image: dict[str, Any]) -> tuple[int, int] | None:
    """(height, width) the vision side always sees, or None when it depends on the image."""
    if image.get("kind") == "idefics3" and not image.get("split"):
        return int(image["tile_size"]), int(image["tile_size"])
    if image.get("kind") == "qwen2_vl" and image.get("fixed_size"):
        height, width = image["fixed_size"]
        return int(height), int(width)
    return None


def lacks_app_block(manifest: dict[str, Any]) -> bool:
    """A VLM bundle exported before the app block existed: its layout is fixed, so this exporter would write one."""
    return (manifest.get("task") == "image_text_to_text" and "app" not in manifest
            and fixed_image(manifest.get("preprocessing", {}).get("image", {})) is not None)


def write_app_block(staging: Path, manifest: dict[str, Any]) -> str | None:
    """Add the ``app`` block (and its feeds file) to a staged VLM bundle; returns why none was written, or None."""
    if manifest.get("task") != "image_text_to_text":
        return None
    image_config = manifest["preprocessing"]["image"]
    size = fixed_image(image_config)
    if size is None:
        return ("no app block: this bundle's image layout depends on the image (the Android app needs a fixed one: "
                "--target tflite or qnn, or an Idefics3 checkpoint without image splitting)")
    adapter = ADAPTERS[image_config["kind"]](image_config, manifest["special_tokens"])
    processed = adapter.preprocess(Image.new("RGB", (size[1], size[0]), (128, 128, 128)))
    tokenizer = TextTokenizer(staging / manifest["tokenizer"]["file"], TextConfig.from_json(manifest["tokenizer"]))
    template = ChatTemplate.from_file(staging / manifest["chat_template"])

    def rendered(text: str, with_image: bool) -> str:
        content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": text})
        out = template.render(messages=[{"role": "user", "content": content}], add_generation_prompt=True)
        return adapter.expand(out, processed) if with_image else out

    added = _added_tokens(staging / manifest["tokenizer"]["file"])
    slots, positions = {}, None
    for key, with_image in (("image", True), ("text_only", False)):
        parts = rendered(MARKER, with_image).split(MARKER)
        if len(parts) != 2:
            return f"no app block: the chat template places the user's text {len(parts) - 1} times"
        cut = max((parts[0].rfind(t) + len(t) for t in added if t in parts[0]), default=0)
        ends = [parts[1].find(t) for t in added if t in parts[1]]
        start = min(ends, default=len(parts[1]))
        prefix, suffix = parts[0][cut:], parts[1][:start]
        before, after = tokenizer.encode_plain(parts[0][:cut]), tokenizer.encode_plain(parts[1][start:])
        for probe in PROBES:
            whole = tokenizer.encode_plain(rendered(probe, with_image))
            if whole != before + tokenizer.encode_plain(prefix + probe + suffix) + after:
                return ("no app block: the user's text does not tokenize on its own in this chat template (it is not "
                        "between special tokens), so the app could not build prompt ids by concatenation")
            table, delta = adapter.positions(np.asarray(whole, np.int64), processed if with_image else None)
            table = table.reshape(-1, len(whole))
            tail = np.arange(len(before), len(whole)) + delta
            if not (table[:, len(before):] == tail).all() or (not with_image and delta != 0):
                return "no app block: positions after the image are not sequential (the app's position rule)"
            if with_image and positions is None:
                positions = {"before": table[:, : len(before)].tolist(), "delta": int(delta)}
        slots[key] = {"before": before, "text_prefix": prefix, "text_suffix": suffix, "after": after}
    image_token = int(manifest["special_tokens"]["image_token_id"])
    block: dict[str, Any] = {
        "image": {"height": size[0], "width": size[1]},
        "image_tokens": slots["image"]["before"].count(image_token),
        "prompt": slots,
        "positions": positions,
    }
    feeds = _vision_feeds(staging, manifest, adapter.vision_feeds(processed))
    if feeds:
        block["vision_feeds"] = feeds
        path = staging / FEEDS_FILE
        manifest["files"] = sorted([e for e in manifest["files"] if e["path"] != FEEDS_FILE]
                                   + [{"path": FEEDS_FILE, "sha256": sha256_file(path), "bytes": path.stat().st_size}],
                                   key=lambda e: e["path"])
    manifest["app"] = block
    return None


def _added_tokens(path: Path) -> list[str]:
    """The tokenizer's added tokens (the strings it splits its input at before anything else)."""
    return [t["content"] for t in json.loads(path.read_text(encoding="utf-8")).get("added_tokens", []) if t["content"]]


def _vision_feeds(staging: Path, manifest: dict[str, Any], feeds: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """The constant inputs of each vision component, written to ``FEEDS_FILE``; None when there are none."""
    stages = [n for n in ("vision_encoder", "vision_frontend", "vision_transformer") if n in manifest["components"]]
    tensors, chunks, offset = [], [], 0
    for name in stages:
        component = manifest["components"][name]
        for spec in component["inputs"]:
            if spec["name"] in STATIC_INPUTS:
                continue
            value = np.ascontiguousarray(feeds[spec["name"]], dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
            data = value.tobytes()
            tensors.append({"component": name, "name": spec["name"], "dtype": spec["dtype"],
                            "shape": list(value.shape), "offset": offset, "bytes": len(data)})
            chunks.append(data)
            offset += len(data)
    if not tensors:
        return None
    (staging / FEEDS_FILE).write_bytes(b"".join(chunks))
    return {"file": FEEDS_FILE, "tensors": tensors}
