"""Write a golden record (golden.json + golden.png, golden_version 1) for a bundle from the Python runtime, into a
copy of the bundle (the model files are symlinked; manifest.json gains the two files and a "golden" entry).

A stand-in for the exporter's own golden writer, following the same format, so the web engine's self-test can be
tested before fresh exports carry one. Usage:
    python web-demo/scripts/make_golden.py --bundle SRC --out DST [--max-new-tokens 12] [--tamper STAGE]
--tamper perturbs one recorded stage (preprocess, vision_encoder/image_encoder, text_decoder, ...) so a test can
check that the self-test FAILs naming it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageDraw

import pocketvlm
from pocketvlm.runtime.manifest import load_bundle

SAMPLES = 64


def summary(array: np.ndarray, exact: bool = False) -> dict:
    array = np.asarray(array)
    out = {"shape": list(array.shape), "dtype": "int64" if array.dtype.kind in "iu" else "float32"}
    flat = array.reshape(-1)
    if exact or out["dtype"] == "int64":
        out["values"] = [int(v) for v in flat]
        return out
    rng = np.random.default_rng(0)
    index = np.unique(np.concatenate([np.linspace(0, flat.size - 1, SAMPLES // 2).astype(int),
                                      rng.integers(0, flat.size, SAMPLES // 2)]))
    out.update(mean=float(flat.astype(np.float64).mean()), std=float(flat.astype(np.float64).std()),
               samples={"index": [int(i) for i in index], "value": [float(flat[i]) for i in index]})
    return out


def golden_image() -> Image.Image:
    image = Image.new("RGBA", (96, 72), (240, 240, 230, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 12, 50, 52), fill=(200, 30, 30, 255))
    draw.polygon([(60, 60), (90, 60), (75, 20)], fill=(30, 60, 200, 200))
    return image


def vlm_stages(bundle: Path, image: Image.Image, max_new_tokens: int) -> list:
    from pocketvlm.runtime.generation import GenerationConfig
    from pocketvlm.runtime.vlm import DEFAULT_CAPTION_PROMPT, VisionLanguageModel

    model = VisionLanguageModel.load(bundle)
    prompt = DEFAULT_CAPTION_PROMPT
    ids, processed = model.prepare(image, prompt)
    feeds = model.adapter.vision_feeds(processed)
    embeds = model.encode_image(processed)["image_embeds"]
    positions, delta = model.adapter.positions(ids, processed)
    result = model.generate_ids(ids, processed, GenerationConfig(max_new_tokens=max_new_tokens))
    forced = model.generate_ids(ids, processed, GenerationConfig(max_new_tokens=len(result.token_ids)),
                                forced=result.token_ids)
    steps = []
    for token, logits in zip(result.token_ids, forced.logits, strict=True):
        top = np.argsort(-logits)[:10]
        steps.append({"token_id": int(token), "top_k": [[int(i), float(logits[i])] for i in top]})
    return [
        {"name": "preprocess", "tensors": {k: summary(v) for k, v in feeds.items()}, "tolerance": {"max_abs": 0.0079}},
        {"name": "vision_encoder", "inputs_from": "preprocess", "tensors": {"image_embeds": summary(embeds)},
         "tolerance": {"max_abs_relative": 0.01}},
        {"name": "prompt", "prompt": prompt, "text": model.adapter.expand(model.render(prompt), processed),
         "input_ids": [int(i) for i in ids], "position_ids": summary(positions, exact=True), "rope_delta": int(delta)},
        {"name": "text_decoder", "teacher_forced": True, "steps": steps,
         "tolerance": {"logit_max_abs_relative": 0.02, "near_tie_margin_relative": 0.02}},
        {"name": "generation", "max_new_tokens": max_new_tokens, "token_ids": result.token_ids, "text": result.text,
         "stop_reason": result.stop_reason},
    ]


def dual_stages(bundle: Path, image: Image.Image) -> list:
    from pocketvlm.runtime.dual_encoder import DualEncoder

    model = DualEncoder.load(bundle)
    labels = ["a red circle", "a blue triangle", "a green square"]
    prompts = model.prompts(labels)
    tokens = model.tokenizer.encode(prompts)
    pixels = model.pixel_values([image])
    probs = model.probabilities(model.logits(model.embed_image([image]), model.embed_text(prompts)))
    return [
        {"name": "preprocess", "tensors": {"pixel_values": summary(pixels)}, "tolerance": {"max_abs": 0.0079}},
        {"name": "image_encoder", "inputs_from": "preprocess",
         "tensors": {"image_embeds": summary(model.image_features([image]))}, "tolerance": {"max_abs_relative": 0.01}},
        {"name": "text", "labels": labels, "prompts": prompts, "input_ids": tokens["input_ids"].tolist(),
         "attention_mask": tokens["attention_mask"].tolist()},
        {"name": "text_encoder", "tensors": {"text_embeds": summary(model.text_features(prompts))},
         "tolerance": {"max_abs_relative": 0.01}},
        {"name": "scores", "probabilities": probs.tolist(), "tolerance": {"max_abs": 0.01}},
    ]


def tamper(stages: list, name: str) -> None:
    stage = next(s for s in stages if s["name"] == name)
    if "tensors" in stage:
        for tensor in stage["tensors"].values():
            if "samples" in tensor:
                tensor["samples"]["value"] = [v + 0.5 + abs(v) for v in tensor["samples"]["value"]]
            else:
                tensor["values"] = [v + 1 for v in tensor["values"]]
    elif name == "text_decoder":
        for step in stage["steps"]:
            step["top_k"] = [[i, v * 1.5 + 1.0] for i, v in step["top_k"]]
    elif name == "generation":
        stage["token_ids"] = [t + 1 for t in stage["token_ids"]]
    elif name == "scores":
        stage["probabilities"] = [[1 - p for p in row] for row in stage["probabilities"]]
    elif name in ("prompt", "text"):
        stage["input_ids"] = [[i + 1 for i in r] if isinstance(r, list) else r + 1 for r in stage["input_ids"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--tamper")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    manifest = dict(bundle.manifest)
    image = golden_image()
    if manifest["task"] == "image_text_to_text":
        stages = vlm_stages(args.bundle, image, args.max_new_tokens)
    else:
        stages = dual_stages(args.bundle, image)
    if args.tamper:
        tamper(stages, args.tamper)
    quant = sorted({c["quantization"]["method"] for c in manifest["components"].values()})
    record = {"golden_version": 1, "task": manifest["task"], "family": manifest["family"],
              "quantization": ",".join(quant),
              "recorded_with": f"pocketvlm {pocketvlm.__version__ if hasattr(pocketvlm, '__version__') else '0.1.0'} "
                               f"runtime, onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
              "image": {"file": "golden.png", "width": image.width, "height": image.height}, "stages": stages}
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for entry in manifest["files"]:
        if entry["path"] in ("golden.json", "golden.png"):  # a bundle that carries the exporter's own: replaced
            continue
        (args.out / entry["path"]).symlink_to((args.bundle / entry["path"]).resolve())
    image.save(args.out / "golden.png")
    (args.out / "golden.json").write_text(json.dumps(record))
    files = [f for f in manifest["files"] if f["path"] not in ("golden.json", "golden.png")]
    for name in ("golden.json", "golden.png"):
        data = (args.out / name).read_bytes()
        files.append({"path": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    manifest["files"], manifest["golden"] = files, {"file": "golden.json"}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(args.out)


if __name__ == "__main__":
    main()
