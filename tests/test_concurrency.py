"""One loaded model shared by several threads, and memory over many requests.

ONNX Runtime's ``InferenceSession.run`` is thread-safe and the runtime keeps every request's state (KV cache,
sampler, text stream) on the request, so 4 threads x 250 mixed requests on one VLM and one dual encoder must give
exactly, bit for bit, what the same requests give one after another. Backends that are not reentrant (LiteRT here)
take turns behind the model's lock and must give the same exactness. The leak check runs in a process of its own
(the suite's workers carry other tests' memory) and compares resident memory after 1,000 captions with the
figure after the first 50.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pocketvlm.runtime.dual_encoder import DualEncoder
from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.vlm import VisionLanguageModel

THREADS, PER_THREAD = 4, 250
PROMPTS = ["Describe this image.", "What shape is it?", "What colour is the shape?", "Is there a circle?"]
LABELS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]


def images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (int(rng.integers(16, 80)), int(rng.integers(16, 80)), 3),
                                         dtype=np.uint8)) for _ in range(count)]


def requests(count: int) -> list[tuple[str, int]]:
    """(kind, index) pairs: captions greedy and seeded-sampled, text-only prompts, image and text embeddings."""
    kinds = ["caption", "sampled", "text_only", "classify", "embed_text"]
    return [(kinds[i % len(kinds)], i) for i in range(count)]


class Workload:
    def __init__(self, vlm: VisionLanguageModel, dual: DualEncoder, max_new_tokens: int = 6) -> None:
        self.vlm, self.dual, self.pictures = vlm, dual, images(16)
        self.greedy = GenerationConfig(max_new_tokens=max_new_tokens)
        self.max_new_tokens = max_new_tokens

    def __call__(self, request: tuple[str, int]) -> Any:
        kind, i = request
        picture, prompt = self.pictures[i % len(self.pictures)], PROMPTS[i % len(PROMPTS)]
        if kind == "caption":
            return self.vlm.generate(picture, prompt, self.greedy).token_ids
        if kind == "sampled":
            config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=True, top_k=20, seed=i)
            return self.vlm.generate(picture, prompt, config).token_ids
        if kind == "text_only":
            return self.vlm.generate(None, prompt, self.greedy).token_ids
        if kind == "classify":
            return self.dual.embed_image([picture]).tobytes()
        return self.dual.embed_text([LABELS[i % len(LABELS)], prompt]).tobytes()


def shared_by_threads(work: Workload, count: int) -> None:
    todo = requests(count)
    serial = [work(r) for r in todo]
    with ThreadPoolExecutor(THREADS) as pool:  # each thread takes the next request: interleaved kinds and models
        threaded = list(pool.map(work, todo))
    mismatched = [r for r, a, b in zip(todo, serial, threaded, strict=True) if a != b]
    assert not mismatched, f"{len(mismatched)} of {count} requests differ when threaded, e.g. {mismatched[:5]}"
    assert len({repr(s) for s in serial}) > count // 10  # the requests differ from each other: the check has teeth


def test_one_onnx_vlm_and_dual_encoder_shared_by_4_threads(workspace: Any) -> None:
    vlm = VisionLanguageModel.load(workspace.bundle("qwen2_vl", "fp32", "varied"))
    dual = DualEncoder.load(workspace.bundle("clip", "fp32"))
    shared_by_threads(Workload(vlm, dual), THREADS * PER_THREAD)


def test_a_litert_vlm_takes_turns(workspace: Any) -> None:
    """A LiteRT decoder owns its KV cache: without the model's lock two threads would write into one cache."""
    pytest.importorskip("ai_edge_litert")
    vlm = VisionLanguageModel.load(workspace.bundle("qwen2_vl", "fp32", "varied", target="tflite"))
    dual = DualEncoder.load(workspace.bundle("clip", "fp32", target="tflite"))
    assert vlm.sessions["text_decoder"].owns_kv_cache and not vlm.sessions["text_decoder"].reentrant
    shared_by_threads(Workload(vlm, dual), 60)


LEAK = """
import json, resource, sys
from PIL import Image
import numpy as np
from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.vlm import VisionLanguageModel
from pocketvlm.runtime.dual_encoder import DualEncoder

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

vlm, dual = VisionLanguageModel.load(sys.argv[1]), DualEncoder.load(sys.argv[2])
rng = np.random.default_rng(0)
pictures = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(8)]
config = GenerationConfig(max_new_tokens=8)
marks = {}
for i in range(1, 1001):
    vlm.generate(pictures[i % 8], "Describe this image.", config, on_text=lambda piece: None)
    dual.classify([pictures[i % 8]], ["a red circle", "a blue square"])
    if i in (50, 250, 500, 1000):
        marks[i] = rss_mb()
print(json.dumps(marks))
"""


def test_memory_after_1000_captions_stays_within_5_percent_of_after_50(workspace: Any) -> None:
    vlm = workspace.bundle("qwen2_vl", "fp32", "varied")
    dual = workspace.bundle("clip", "fp32")
    done = subprocess.run([sys.executable, "-c", LEAK, str(vlm), str(dual)], capture_output=True, text=True,
                          timeout=900, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    marks = {int(k): v for k, v in json.loads(done.stdout.splitlines()[-1]).items()}
    print(f"RSS MB after captions: {marks}")
    assert marks[1000] <= marks[50] * 1.05, marks
