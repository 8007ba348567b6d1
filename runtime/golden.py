"""The golden record: what the Python runtime computed on one bundle, per stage, for another engine to replay.

``pocketvlm export`` writes ``golden.json`` + ``golden.png`` into every bundle (format:
``runtime/schema/golden.schema.json``). An engine that runs the bundle elsewhere (the web demo, the Android and iOS
apps, this runtime on another machine) replays it stage by stage -- preprocessing, the vision or image encoder, the
prompt ids and positions, the decoder's next-token logits teacher-forced on the recorded tokens, free-running greedy
generation (or, for dual encoders, the text side and the label probabilities) -- and reports PASS/FAIL per stage
with the error it measured, so a user sees on the phone whether that engine computes what the exporter verified.

Tensors are summarised (shape, mean, std, a fixed set of sampled elements): enough to catch a wrong kernel or
altered weights, small enough to ship. The tolerances come from the family's registry entry and are written into the
record, so no engine needs the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketvlm.runtime.dual_encoder import l2_normalize
from pocketvlm.runtime.errors import BundleError
from pocketvlm.runtime.generation import GenerationConfig

if TYPE_CHECKING:
    from PIL import Image

    from pocketvlm.runtime.dual_encoder import DualEncoder
    from pocketvlm.runtime.vlm import VisionLanguageModel

GOLDEN_VERSION = 1
GOLDEN_FILE, GOLDEN_IMAGE = "golden.json", "golden.png"
SAMPLES = 96  # sampled elements per float tensor
TOP_K = 10  # logits kept per decoder step
FULL_INT_VALUES = 8192  # int tensors up to this size are stored whole


@dataclass(frozen=True)
class GoldenLimits:
    """The tolerances a replay is held to (from the family's ``Tolerances``, per quantization method and target)."""

    pixel_max_abs: float  # preprocessing, absolute (one 8-bit level after normalisation, by default)
    output_max_abs_relative: float  # encoder outputs, over the largest sampled magnitude
    logit_max_abs_relative: float  # next-token logits at the recorded top-k ids, over the largest |logit|
    probability_max_abs: float  # dual encoders' label probabilities


# -- summaries ---------------------------------------------------------------------------------------------------------
def summarize(array: np.ndarray, samples: int = SAMPLES) -> dict[str, Any]:
    """Shape, dtype, mean, std and a fixed set of sampled elements (evenly spaced plus seeded random ones)."""
    flat = np.asarray(array).reshape(-1)
    summary: dict[str, Any] = {"shape": [int(d) for d in np.shape(array)], "dtype": str(flat.dtype)}
    if np.issubdtype(flat.dtype, np.integer) and flat.size <= FULL_INT_VALUES:
        summary["values"] = [int(v) for v in flat]
        return summary
    if flat.size == 0:
        raise BundleError("cannot summarise an empty tensor for the golden record", "report this as a bug")
    values = flat.astype(np.float64)
    summary["mean"], summary["std"] = float(values.mean()), float(values.std())
    even = np.linspace(0, flat.size - 1, num=min(samples // 2, flat.size)).round().astype(np.int64)
    rng = np.random.default_rng(flat.size)
    extra = rng.choice(flat.size, size=min(samples - len(even), flat.size), replace=False)
    index = np.unique(np.concatenate([even, extra]))
    summary["samples"] = {"index": [int(i) for i in index], "value": [float(values[i]) for i in index]}
    return summary


def compare(expected: dict[str, Any], actual: np.ndarray, max_abs: float | None = None,
            max_abs_relative: float | None = None) -> tuple[bool, float, float, str]:
    """-> (pass, error, limit, detail) of one tensor against its summary. Int tensors stored whole must be equal."""
    actual = np.asarray(actual)
    if list(actual.shape) != list(expected["shape"]):
        return False, float("inf"), 0.0, f"shape {list(actual.shape)} != {expected['shape']}"
    flat = actual.reshape(-1)
    _check_summary(expected, flat.size)
    if "values" in expected:
        wrong = int(np.count_nonzero(flat.astype(np.int64) != np.asarray(expected["values"], np.int64)))
        return wrong == 0, float(wrong), 0.0, f"{wrong} of {flat.size} values differ"
    index = np.asarray(expected["samples"]["index"], np.int64)
    reference = np.asarray(expected["samples"]["value"], np.float64)
    error = float(np.max(np.abs(flat[index].astype(np.float64) - reference)))
    error = max(error, abs(float(flat.astype(np.float64).mean()) - expected["mean"]))
    if max_abs_relative is not None:
        limit = max_abs_relative * max(float(np.max(np.abs(reference))), 1e-12)
    elif max_abs is not None:
        limit = max_abs
    else:
        raise BundleError("golden stage has no tolerance", "re-export the bundle")
    return bool(error <= limit), error, limit, f"max error {error:.3g} (limit {limit:.3g})"


def _check_summary(expected: dict[str, Any], size: int) -> None:
    """A summary that cannot describe a tensor of ``size`` elements (an edited record) is the record's fault."""
    fix = "re-export the bundle; never edit golden.json by hand"
    if "values" in expected:
        if len(expected["values"]) != size:
            raise BundleError(f"golden record holds {len(expected['values'])} values for a tensor of {size}", fix)
        return
    index, value = expected["samples"]["index"], expected["samples"]["value"]
    if len(index) != len(value) or not index or any(not 0 <= i < size for i in index):
        raise BundleError(f"golden record samples do not fit a tensor of {size} elements "
                          f"({len(index)} indices, {len(value)} values)", fix)


# -- recording ---------------------------------------------------------------------------------------------------------
def _top_k(logits: np.ndarray, k: int = TOP_K) -> list[list[float]]:
    order = np.argsort(-logits, kind="stable")[:k]
    return [[int(i), float(logits[i])] for i in order]


def record_vlm(model: VisionLanguageModel, image: Image.Image, prompt: str, steps: int,
               limits: GoldenLimits) -> list[dict[str, Any]]:
    """The stages of a VLM bundle: preprocessing, vision, prompt, teacher-forced logits, greedy generation."""
    input_ids, processed = model.prepare(image, prompt)
    feeds = model.adapter.vision_feeds(processed)
    vision = model.encode_image(processed)
    positions, delta = model.adapter.positions(input_ids, processed)
    greedy = model.generate_ids(input_ids, processed, GenerationConfig(max_new_tokens=steps))
    forced = model.generate_ids(input_ids, processed, GenerationConfig(max_new_tokens=len(greedy.token_ids)),
                                forced=list(greedy.token_ids))
    assert forced.logits is not None
    vision_name = "vision_encoder"
    text = model.adapter.expand(model.render(prompt), processed)
    return [
        {"name": "preprocess", "tensors": {name: summarize(value) for name, value in feeds.items()},
         "tolerance": {"max_abs": limits.pixel_max_abs}},
        {"name": vision_name, "inputs_from": "preprocess",
         "tensors": {name: summarize(value) for name, value in vision.items()},
         "tolerance": {"max_abs_relative": limits.output_max_abs_relative}},
        {"name": "prompt", "prompt": prompt, "text": text, "input_ids": [int(i) for i in input_ids],
         "position_ids": summarize(positions), "rope_delta": int(delta)},
        {"name": "text_decoder", "teacher_forced": True,
         "steps": [{"token_id": int(token), "top_k": _top_k(logits)}
                   for token, logits in zip(greedy.token_ids, forced.logits, strict=True)],
         "tolerance": {"logit_max_abs_relative": limits.logit_max_abs_relative,
                       "near_tie_margin_relative": limits.logit_max_abs_relative}},
        {"name": "generation", "max_new_tokens": steps, "token_ids": [int(t) for t in greedy.token_ids],
         "text": greedy.text, "stop_reason": greedy.stop_reason},
    ]


def record_dual(model: DualEncoder, image: Image.Image, labels: list[str],
                limits: GoldenLimits) -> list[dict[str, Any]]:
    """The stages of a dual-encoder bundle: preprocessing, image features, text ids, text features, probabilities."""
    pixels = model.pixel_values([image])
    image_out = model.sessions["image_encoder"].run({"pixel_values": pixels})
    prompts = model.prompts(labels)
    text_feeds = model.tokenizer.encode(prompts)
    text_out = model.sessions["text_encoder"].run(text_feeds)
    probabilities = model.probabilities(model.logits(  # from the outputs above: each tower runs once
        l2_normalize(image_out["image_embeds"]), l2_normalize(text_out["text_embeds"])))
    output = {"tolerance": {"max_abs_relative": limits.output_max_abs_relative}}
    return [
        {"name": "preprocess", "tensors": {"pixel_values": summarize(pixels)},
         "tolerance": {"max_abs": limits.pixel_max_abs}},
        {"name": "image_encoder", "inputs_from": "preprocess",
         "tensors": {"image_embeds": summarize(image_out["image_embeds"])}, **output},
        {"name": "text", "labels": list(labels), "prompts": prompts,
         **{name: [[int(v) for v in row] for row in value] for name, value in text_feeds.items()}},
        {"name": "text_encoder", "inputs_from": "text",
         "tensors": {"text_embeds": summarize(text_out["text_embeds"])}, **output},
        {"name": "scores", "probabilities": [[float(p) for p in row] for row in probabilities],
         "tolerance": {"max_abs": limits.probability_max_abs}},
    ]


def record(model: VisionLanguageModel | DualEncoder, image: Image.Image, limits: GoldenLimits,
           engine: str, prompt: str = "", labels: list[str] | None = None, steps: int = 8) -> dict[str, Any]:
    """The whole record (without the image file itself, which the caller writes as ``golden.png``)."""
    manifest = model.bundle.manifest
    task = manifest.get("task")
    if task == "image_text_to_text":
        stages = record_vlm(model, image, prompt, steps, limits)  # type: ignore[arg-type]
    else:
        stages = record_dual(model, image, list(labels or []), limits)  # type: ignore[arg-type]
    methods = {c.get("quantization", {}).get("method", "fp32") for c in manifest["components"].values()}
    return {"golden_version": GOLDEN_VERSION, "task": task, "family": manifest["family"],
            "target": manifest["target"], "quantization": "/".join(sorted(methods)), "recorded_with": engine,
            "image": {"file": GOLDEN_IMAGE, "width": image.width, "height": image.height}, "stages": stages}
