"""Replay a bundle's golden record on this runtime: PASS/FAIL per stage with the measured error.

The rules are the record's contract, the same in every engine (web, Android, iOS): float tensors are compared at
the recorded sample indices (and by their mean), int tensors and ids exactly; the decoder is teacher-forced on the
recorded tokens and its logits compared at the recorded top-k ids; free-running greedy generation must give the
recorded tokens, or first differ at a step whose recorded top-1 margin is a near-tie.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from pocketvlm.runtime.dual_encoder import DualEncoder, l2_normalize
from pocketvlm.runtime.errors import BundleError
from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.golden import GOLDEN_VERSION, compare
from pocketvlm.runtime.image import load_image
from pocketvlm.runtime.manifest import Bundle, reading_fields
from pocketvlm.runtime.schema_check import first_error, load_schema
from pocketvlm.runtime.vlm import VisionLanguageModel


@dataclass(frozen=True)
class StageResult:
    name: str
    passed: bool
    error: float
    limit: float
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.detail}"


def read_record(bundle: Bundle) -> dict[str, Any]:
    entry = bundle.manifest.get("golden")
    if not entry:
        raise BundleError(f"bundle {bundle.path} carries no golden record",
                          "re-export it with this pocketvlm version (every export writes golden.json)")
    try:
        record = json.loads(bundle.file(entry["file"]).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, not JSON, nested without end
        raise BundleError(f"golden record {entry['file']} cannot be read ({exc})", "re-export the bundle") from exc
    if not isinstance(record, dict) or record.get("golden_version") != GOLDEN_VERSION:
        version = record.get("golden_version") if isinstance(record, dict) else None
        raise BundleError(f"golden record version {version} is not {GOLDEN_VERSION}",
                          "use the pocketvlm version that exported the bundle")
    problem = first_error(record, load_schema("golden"))
    if problem is not None:
        raise BundleError(f"golden record {entry['file']} does not follow the golden schema: {problem}",
                          "re-export the bundle; never edit golden.json by hand")
    return record


def _tensors(stage: dict[str, Any], actual: dict[str, np.ndarray]) -> StageResult:
    tolerance, results = stage["tolerance"], []
    for name, expected in stage["tensors"].items():
        if name not in actual:
            return StageResult(stage["name"], False, float("inf"), 0.0, f"this engine produced no '{name}'")
        passed, error, limit, detail = compare(expected, actual[name], tolerance.get("max_abs"),
                                               tolerance.get("max_abs_relative"))
        results.append((passed, error, limit, f"{name} {detail}"))
    worst = max(results, key=lambda r: (not r[0], r[1] / max(r[2], 1e-30)))
    return StageResult(stage["name"], all(r[0] for r in results), worst[1], worst[2],
                       "; ".join(r[3] for r in results))


def _teacher_forced(stage: dict[str, Any], logits: list[np.ndarray]) -> tuple[StageResult, set[int]]:
    """Logits at the recorded top-k ids per step; the argmax must be the recorded token unless a near-tie."""
    tolerance, worst, near_ties, wrong = stage["tolerance"], 0.0, set(), []
    for step, (expected, actual) in enumerate(zip(stage["steps"], logits, strict=False)):
        ids = np.asarray([i for i, _ in expected["top_k"]], np.int64)
        if not ids.size or ids.min() < 0 or ids.max() >= actual.size:
            raise BundleError(f"golden record step {step} names token ids outside the vocabulary of {actual.size}",
                              "re-export the bundle; never edit golden.json by hand")
        reference = np.asarray([v for _, v in expected["top_k"]], np.float64)
        scale = max(float(np.max(np.abs(reference))), 1e-12)
        worst = max(worst, float(np.max(np.abs(actual[ids] - reference))) / scale)
        margin = (reference[0] - reference[1]) / scale if len(reference) > 1 else float("inf")
        if margin <= tolerance["near_tie_margin_relative"]:
            near_ties.add(step)
        elif int(np.argmax(actual)) != expected["token_id"]:
            wrong.append(step)
    limit = tolerance["logit_max_abs_relative"]
    steps = len(stage["steps"])
    passed = len(logits) == steps and worst <= limit and not wrong
    detail = (f"{steps} steps teacher-forced, max logit error {worst:.3g} of the largest |logit| (limit {limit:.3g})"
              + (f"; argmax differs at steps {wrong}" if wrong else "")
              + (f"; near-ties at steps {sorted(near_ties)}" if near_ties else ""))
    return StageResult(stage["name"], passed, worst, limit, detail), near_ties


def _generation(stage: dict[str, Any], tokens: list[int], near_ties: set[int]) -> StageResult:
    expected = stage["token_ids"]
    first = next((i for i, (a, b) in enumerate(zip(tokens, expected, strict=False)) if a != b),
                 None if len(tokens) == len(expected) else min(len(tokens), len(expected)))
    passed = first is None or first in near_ties
    detail = ("greedy tokens equal the recorded ones" if first is None else
              f"greedy tokens first differ at step {first}" + (" (a recorded near-tie)" if passed else ""))
    return StageResult(stage["name"], passed, float(first is not None), 0.0, detail)


def _exact(name: str, actual: Any, expected: Any, what: str) -> StageResult:
    equal = actual == expected
    return StageResult(name, equal, float(not equal), 0.0, f"{what} {'equal' if equal else 'differ'}")


def replay_vlm(model: VisionLanguageModel, record: dict[str, Any], image: Any) -> list[StageResult]:
    stages = {stage["name"]: stage for stage in record["stages"]}
    prompt = stages["prompt"]
    input_ids, processed = model.prepare(image, prompt["prompt"])
    results = [_tensors(stages["preprocess"], model.adapter.vision_feeds(processed)),
               _tensors(stages["vision_encoder"], model.encode_image(processed))]
    positions, delta = model.adapter.positions(input_ids, processed)
    same_ids = [int(i) for i in input_ids] == prompt["input_ids"]
    passed, *_ = compare(prompt["position_ids"], positions)
    results.append(StageResult("prompt", same_ids and passed and delta == prompt["rope_delta"], 0.0, 0.0,
                               f"input ids {'equal' if same_ids else 'differ'}, positions "
                               f"{'equal' if passed and delta == prompt['rope_delta'] else 'differ'}"))
    forced_tokens = [step["token_id"] for step in stages["text_decoder"]["steps"]]
    forced = model.generate_ids(input_ids, processed, GenerationConfig(max_new_tokens=len(forced_tokens)),
                                forced=forced_tokens)
    decoder, near_ties = _teacher_forced(stages["text_decoder"], forced.logits or [])
    results.append(decoder)
    generation = stages["generation"]
    greedy = model.generate_ids(input_ids, processed, GenerationConfig(max_new_tokens=generation["max_new_tokens"]))
    results.append(_generation(generation, list(greedy.token_ids), near_ties))
    return results


def replay_dual(model: DualEncoder, record: dict[str, Any], image: Any) -> list[StageResult]:
    stages = {stage["name"]: stage for stage in record["stages"]}
    pixels = model.pixel_values([image])
    image_out = model.sessions["image_encoder"].run({"pixel_values": pixels})
    results = [_tensors(stages["preprocess"], {"pixel_values": pixels}),
               _tensors(stages["image_encoder"], image_out)]
    text = stages["text"]
    prompts = model.prompts(text["labels"])
    feeds = model.tokenizer.encode(prompts)
    results.append(_exact("text", {k: v.tolist() for k, v in feeds.items()},
                          {k: text[k] for k in feeds}, "token ids and masks"))
    text_out = model.sessions["text_encoder"].run(feeds)
    results.append(_tensors(stages["text_encoder"], text_out))
    scores = stages["scores"]
    probabilities = model.probabilities(model.logits(l2_normalize(image_out["image_embeds"]),
                                                     l2_normalize(text_out["text_embeds"])))
    error = float(np.max(np.abs(probabilities - np.asarray(scores["probabilities"]))))
    limit = scores["tolerance"]["max_abs"]
    results.append(StageResult("scores", error <= limit, error, limit,
                               f"label probabilities max error {error:.3g} (limit {limit:.3g})"))
    return results


def selftest(model: VisionLanguageModel | DualEncoder) -> list[StageResult]:
    """Replay the model's bundle's golden record on this runtime."""
    record = read_record(model.bundle)
    with reading_fields(model.bundle, "golden record replay"):  # a record inconsistent in itself (edited)
        image = load_image(model.bundle.file(record["image"]["file"]))
        if isinstance(model, VisionLanguageModel):
            return replay_vlm(model, record, image)
        return replay_dual(model, record, image)
