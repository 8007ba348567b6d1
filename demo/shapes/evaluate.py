"""Task accuracy of the shapes models on the easy-VQA test split, for PyTorch fp32 and for any exported bundle.

- Captioner: caption exact-match (the caption names exactly the right colour and the right shape, nothing else)
  for the runtime's default caption prompt (``DEFAULT_CAPTION_PROMPT``), and VQA answer accuracy on one package
  question per image (seeded choice).
- Shapes CLIP: zero-shot top-1 accuracy over the 24 colour x shape labels.

The PyTorch and bundle paths feed identical inputs (the runtime's own preprocessing and prompt ids), so a difference
between them is the model's numerics, not the pipeline.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pocketvlm.demo.shapes.data import COLOURS, LABELS, SHAPES, Question, Sample
from pocketvlm.demo.shapes.shapes_clip import ZERO_SHOT_LABELS
from pocketvlm.runtime.vlm import DEFAULT_CAPTION_PROMPT

Progress = Callable[[str], None]
MAX_NEW_TOKENS = 10


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def caption_correct(text: str, sample: Sample) -> bool:
    said = words(text)
    return ({w for w in said if w in COLOURS} == {sample.colour}
            and {w for w in said if w in SHAPES} == {sample.shape})


def answer_correct(text: str, answer: str) -> bool:
    return words(text) == [answer]


def vqa_subset(samples: Sequence[Sample], seed: int = 0) -> list[tuple[Sample, Question]]:
    rng = np.random.default_rng(seed)
    return [(s, s.questions[int(rng.integers(len(s.questions)))]) for s in samples if s.questions]


class Captioner(Protocol):
    def answer(self, sample: Sample, prompt: str) -> str: ...


class BundleCaptioner:
    """Greedy generation through the runtime (any target the runtime supports)."""

    def __init__(self, bundle: Path, threads: int = 0) -> None:
        from pocketvlm.export.targets.coreml.check import load_runner
        from pocketvlm.runtime.generation import GenerationConfig

        self.model = load_runner(bundle, threads=threads)  # a Core ML bundle off macOS: the reference evaluator
        self.config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS)

    def answer(self, sample: Sample, prompt: str) -> str:
        return self.model.generate(sample.image(), prompt, self.config).text


class TorchCaptioner:
    """Greedy ``generate()`` of the PyTorch model on the runtime's prompt ids and pixel values."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        from pocketvlm.demo.shapes import captioner
        from pocketvlm.demo.shapes.train_captioner import PromptBuilder

        self.model, self.builder = model, PromptBuilder(tokenizer)
        self.image_config = captioner.runtime_image_config()

    def answer(self, sample: Sample, prompt: str) -> str:
        import torch

        from pocketvlm.runtime.idefics3 import preprocess

        ids = torch.tensor([self.builder.prompt_ids(prompt)])
        pixels = torch.from_numpy(preprocess(sample.image(), self.image_config).pixel_values)[None]
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                      max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        return self.builder.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@dataclass
class Timer:
    times: list[float]

    def summary(self) -> dict[str, float]:
        ms = sorted(t * 1e3 for t in self.times)
        return {"median_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))]} if ms else {}


def evaluate_captioner(runner: Captioner, samples: Sequence[Sample], progress: Progress | None = None,
                       vqa: bool = True, examples: int = 0) -> dict[str, Any]:
    say = progress or (lambda message: None)
    timer, right, shown = Timer([]), 0, []
    for i, sample in enumerate(samples):
        started = time.perf_counter()
        text = runner.answer(sample, DEFAULT_CAPTION_PROMPT)
        timer.times.append(time.perf_counter() - started)
        right += caption_correct(text, sample)
        if i < examples:
            shown.append({"image_id": sample.image_id, "truth": sample.caption, "caption": text})
        if (i + 1) % 100 == 0:
            say(f"captions {i + 1}/{len(samples)}: exact-match {right / (i + 1):.3f}")
    result: dict[str, Any] = {"images": len(samples), "caption_exact_match": right / max(len(samples), 1),
                              "caption_latency": timer.summary(), "examples": shown}
    if vqa:
        pairs = vqa_subset(samples)
        correct = sum(answer_correct(runner.answer(sample, q.text), q.answer) for sample, q in pairs)
        result.update(vqa_questions=len(pairs), vqa_accuracy=correct / max(len(pairs), 1))
    return result


class BundleClassifier:
    def __init__(self, bundle: Path, threads: int = 0) -> None:
        from pocketvlm.export.targets.coreml.check import load_runner

        self.model = load_runner(bundle, threads=threads)  # a Core ML bundle off macOS: the reference evaluator

    def top1(self, images: list[Any], labels: Sequence[str]) -> list[str]:
        return [preds[0].label for preds in self.model.classify(images, labels)]


class TorchClassifier:
    """HF ``CLIPModel`` with the HF image processor and tokenizer, the bundle's prompt template applied."""

    def __init__(self, model: Any, tokenizer: Any, processor: Any, template: str = "a photo of {}.") -> None:
        self.model, self.tokenizer, self.processor, self.template = model, tokenizer, processor, template

    def top1(self, images: list[Any], labels: Sequence[str]) -> list[str]:
        import torch

        texts = self.tokenizer([self.template.replace("{}", label) for label in labels], padding=True,
                               return_tensors="pt")
        pixels = torch.from_numpy(np.asarray(self.processor(images=images, return_tensors="np")["pixel_values"]))
        with torch.no_grad():
            out = self.model(input_ids=texts["input_ids"], attention_mask=texts["attention_mask"],
                             pixel_values=pixels)
        return [labels[int(i)] for i in out.logits_per_image.argmax(-1)]


def evaluate_classifier(runner: BundleClassifier | TorchClassifier, samples: Sequence[Sample],
                        batch: int = 100) -> dict[str, Any]:
    labels = ZERO_SHOT_LABELS
    timer, right = Timer([]), 0
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        began = time.perf_counter()
        predicted = runner.top1([s.image() for s in chunk], labels)
        timer.times.append((time.perf_counter() - began) / len(chunk))
        right += sum(p == labels[LABELS.index(s.label)] for p, s in zip(predicted, chunk, strict=True))
    return {"images": len(samples), "labels": len(labels), "zero_shot_accuracy": right / max(len(samples), 1),
            "per_image_latency": timer.summary()}

