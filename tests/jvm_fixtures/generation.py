"""What the Android engine's generation loop, KV-cache decoders, sampler, prompt builder and zero-shot scoring must
reproduce, from the Python runtime itself.

The decoder scenarios run ``VisionLanguageModel.generate_ids`` (the real loop: prefill, decode steps, stop reasons,
teacher forcing, the image rows cut after prefill) over a fake text decoder. An ONNX-style one is fed the runtime's
``KVCache`` buffers; a static one (LiteRT signatures) goes through the runtime's ``StaticKVCache`` and ``chunks``,
as ``LiteRTSession`` does. The fake model (``fake_model``, mirrored in DecoderTest.kt) is integer arithmetic in
float32, so both sides agree exactly: each new token's cache entries encode its id, its positions and its image rows,
and the logits are a hash of every attended cache entry, so a wrong slot, mask, position or image row changes the
tokens. Every call's feeds are recorded. The sampler cases record the distribution the Python ``Sampler`` draws from,
and the draws a SplitMix64 stream gives (numpy's PCG64 stream is not portable; the web demo uses SplitMix64 too).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from pocketvlm.runtime.dual_encoder import DualEncoder, Scoring, l2_normalize
from pocketvlm.runtime.errors import InputError
from pocketvlm.runtime.generation import GenerationConfig, KVCache, Sampler
from pocketvlm.runtime.idefics3 import Idefics3Adapter
from pocketvlm.runtime.manifest import ComponentSpec
from pocketvlm.runtime.qwen_vl import QwenAdapter, QwenImage, mrope_positions
from pocketvlm.runtime.static_decode import DECODE, StaticKVCache
from pocketvlm.runtime.vlm import VisionLanguageModel
from tests.jvm_fixtures import rowloop

LAYERS, KV_HEADS, HEAD_DIM, HIDDEN, VOCAB, LEVELS = 2, 2, 3, 4, 40, 2
GRID, MERGE = (4, 6), 2  # 2 x 3 merged tokens: 6 image tokens, M-RoPE delta -3
MASK64 = (1 << 64) - 1


def tensor(array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)
    return {"shape": list(array.shape), "data": array.reshape(-1).tolist()}


# -- the fake decoder model -------------------------------------------------------------------------------------------
def fake_model(feeds: dict[str, np.ndarray], image_token: int) -> dict[str, np.ndarray]:
    """Outputs from the feeds of one decoder call (see the module docstring); DecoderTest.kt has the same function."""
    ids = feeds["input_ids"][0].astype(np.int64)
    n = ids.size
    positions = feeds["position_ids"].reshape(-1, n).astype(np.int64)
    mask = feeds["attention_mask"][0].astype(np.int64)
    capacity = mask.size - n
    rows, deep = feeds["image_embeds"], feeds.get("deepstack_embeds")
    assert rows.ndim == 2 and rows.shape[1] == HIDDEN, rows.shape
    mixed = (positions * np.arange(1, positions.shape[0] + 1)[:, None]).sum(0)
    image = np.zeros(n, np.int64)
    used = 0
    for i in range(n):
        if ids[i] == image_token:
            assert used < rows.shape[0], "an image token without an image row"
            image[i] = int((rows[used].astype(np.int64) * np.arange(1, HIDDEN + 1)).sum())
            if deep is not None:
                image[i] += sum(int(deep[level, used].astype(np.int64).sum()) * (level + 2) for level in range(LEVELS))
            used += 1
    outputs: dict[str, np.ndarray] = {}
    total = 0
    for layer in range(LAYERS):
        for kind, factor in (("key", 1), ("value", 2)):
            past = feeds[f"past_{kind}_{layer}"]
            assert past.shape == (1, KV_HEADS, capacity, HEAD_DIM), past.shape
            assert (past == np.round(past)).all()
            h = np.arange(KV_HEADS)[:, None, None]
            d = np.arange(HEAD_DIM)[None, None, :]
            entry = ids[None, :, None] * 3 + mixed[None, :, None] * 5 + layer * 7 + h * 11 + d
            if kind == "value":
                entry = entry + 1 + image[None, :, None]
            outputs[f"present_{kind}_{layer}"] = entry[None].astype(np.float32)
            total += factor * int(past[0][:, mask[:capacity] == 1].astype(np.int64).sum())
            total += factor * int(entry[:, mask[capacity:] == 1].sum())
    v = np.arange(VOCAB, dtype=np.int64)
    logits = (total * 31 + v * 17 + (total % 13) * v * v) % 101
    outputs["logits"] = logits[None].astype(np.float32)
    return outputs


# -- components and sessions ------------------------------------------------------------------------------------------
def decoder_block(mrope: bool) -> dict[str, Any]:
    return {"position_ids": "mrope" if mrope else "1d", "num_layers": LAYERS, "kv_heads": KV_HEADS,
            "head_dim": HEAD_DIM, "hidden_size": HIDDEN, "vocab_size": VOCAB}


def component(mrope: bool, deep: bool, static: dict[str, Any] | None) -> dict[str, Any]:
    """The text_decoder record as the exporter writes it (decoder_signature), static block for LiteRT."""
    inputs = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
              {"name": "image_embeds", "dtype": "float32", "shape": ["image_tokens", HIDDEN]}]
    if deep:
        inputs.append({"name": "deepstack_embeds", "dtype": "float32", "shape": [LEVELS, "image_tokens", HIDDEN]})
    inputs += [{"name": "position_ids", "dtype": "int64", "shape": [3, "batch", "sequence"] if mrope
                else ["batch", "sequence"]},
               {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "past_sequence"]}]
    outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", VOCAB]}]
    for layer in range(LAYERS):
        for kind in ("key", "value"):
            inputs.append({"name": f"past_{kind}_{layer}", "dtype": "float32",
                           "shape": ["batch", KV_HEADS, "past", HEAD_DIM]})
            outputs.append({"name": f"present_{kind}_{layer}", "dtype": "float32",
                            "shape": ["batch", KV_HEADS, "sequence", HEAD_DIM]})
    record = {"file": "text_decoder.tflite" if static else "text_decoder.onnx", "sha256": "0" * 64, "bytes": 1,
              "format": "tflite" if static else "onnx", "inputs": inputs, "outputs": outputs, "quantization": {}}
    if static:
        record["static"] = static
    return record


def static_block(mrope: bool, deep: bool, prefill: int, capacity: int, image_token: int) -> dict[str, Any]:
    """As export/static_shapes.decoder_examples sizes the signatures."""
    signatures = {}
    for name, new in ((f"prefill_{prefill}", prefill), (DECODE, 1)):
        shapes = {"input_ids": [1, new], "image_embeds": [new, HIDDEN]}
        if deep:
            shapes["deepstack_embeds"] = [LEVELS, new, HIDDEN]
        shapes["position_ids"] = [3, 1, new] if mrope else [1, new]
        shapes["attention_mask"] = [1, capacity + new]
        for layer in range(LAYERS):
            for kind in ("key", "value"):
                shapes[f"past_{kind}_{layer}"] = [1, KV_HEADS, capacity, HEAD_DIM]
        signatures[name] = shapes
    return {"signatures": signatures, "prefill_length": prefill, "kv_capacity": capacity, "image_token_id": image_token}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def record(self, entry: str, feeds: dict[str, np.ndarray]) -> None:
        self.calls.append({"entry": entry, "feeds": {k: tensor(np.array(v)) for k, v in feeds.items()}})


class FakeOrtSession:
    """As OrtSession: the feeds its inputs name, to the graph (the fake model)."""

    owns_kv_cache, reentrant = False, True

    def __init__(self, spec: ComponentSpec, image_token: int, recorder: Recorder) -> None:
        self.input_names = tuple(t.name for t in spec.inputs)
        self.image_token, self.recorder = image_token, recorder

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        used = {name: np.asarray(feeds[name]) for name in self.input_names}
        self.recorder.record("model", used)
        return fake_model(used, self.image_token)

    def reset(self) -> None:
        pass


class FakeLiteRTSession:
    """As LiteRTSession for a decoder: a StaticKVCache over the signatures (shapes checked as _Runner does)."""

    owns_kv_cache, reentrant = True, False

    def __init__(self, static: dict[str, Any], recorder: Recorder) -> None:
        self.static, self.recorder = static, recorder
        decode = static["signatures"][DECODE]
        self.cache = StaticKVCache({k: (tuple(v), np.float32) for k, v in decode.items()}, static["kv_capacity"],
                                   "LiteRT", np.int64)

    def entry(self, name: str) -> Any:
        shapes = self.static["signatures"][name]

        def call(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            assert set(feeds) == set(shapes), (sorted(feeds), sorted(shapes))
            for key, shape in shapes.items():
                assert list(np.shape(feeds[key])) == shape, (name, key, np.shape(feeds[key]), shape)
            self.recorder.record(name, feeds)
            return fake_model(feeds, self.static["image_token_id"])

        return call

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entries = {name: self.entry(name) for name in self.static["signatures"]}
        return self.cache.run(feeds, entries, self.static["image_token_id"])

    def reset(self) -> None:
        self.cache.reset()


class _Tokens:
    @staticmethod
    def decode(ids: list[int]) -> str:
        return ""


# -- decoder scenarios ------------------------------------------------------------------------------------------------
def prompt_positions(ids: list[int], mrope: bool, image: bool, image_token: int) -> tuple[np.ndarray, int]:
    array = np.asarray(ids, np.int64)
    if mrope:
        images = [QwenImage(None, None, GRID, MERGE)] if image else []  # type: ignore[arg-type]
        return mrope_positions(array, image_token, images)
    return Idefics3Adapter.positions(array, None)


def image_rows(deep: bool, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = (GRID[0] // MERGE) * (GRID[1] // MERGE)
    rows = {"image_embeds": rng.integers(0, 10, (tokens, HIDDEN)).astype(np.float32)}
    if deep:
        rows["deepstack_embeds"] = rng.integers(0, 10, (LEVELS, tokens, HIDDEN)).astype(np.float32)
    return rows


def run(name: str, ids: list[int], *, mrope: bool, deep: bool = False, image: bool = False,
        static: dict[str, Any] | None = None, eos: tuple[int, ...] = (), max_context: int = 4096,
        forced: list[int] | None = None, **config: Any) -> dict[str, Any]:
    """One generation through the runtime's loop; the scenario and what it fed and returned."""
    image_token = static["image_token_id"] if static else 5
    record = component(mrope, deep, static)
    spec = ComponentSpec.from_json("text_decoder", record)
    recorder = Recorder()
    session = FakeLiteRTSession(static, recorder) if static else FakeOrtSession(spec, image_token, recorder)
    positions, delta = prompt_positions(ids, mrope, image, image_token)
    vision = image_rows(deep, seed=len(ids)) if image else None
    vlm = object.__new__(VisionLanguageModel)
    vlm.bundle = SimpleNamespace(component=lambda _: spec)
    vlm.sessions, vlm.turns, vlm.tokenizer = {"text_decoder": session}, contextlib.nullcontext(), _Tokens()
    vlm.decoder = decoder_block(mrope)
    vlm.eos_ids, vlm.max_context = set(eos), max_context
    step = QwenAdapter.step_position if mrope else Idefics3Adapter.step_position
    vlm.adapter = SimpleNamespace(positions=lambda *_: (positions, delta), step_position=step)
    vlm.encode_image = (lambda _: dict(vision)) if image else (lambda p: VisionLanguageModel.encode_image(vlm, None))
    on_token: list[int] = []
    generation = GenerationConfig(**config)
    scenario: dict[str, Any] = {
        "name": name, "component": record, "decoder": decoder_block(mrope), "eos_token_ids": list(eos),
        "max_context": max_context, "image_token_id": image_token,
        "prompt": {"ids": ids, "positions": tensor(positions), "delta": int(delta)},
        "image": {k: tensor(v) for k, v in vision.items()} if vision else None,
        "config": {"max_new_tokens": generation.max_new_tokens, "stop_token_ids": list(generation.stop_token_ids),
                   "ignore_eos": generation.ignore_eos},
        "forced": forced}
    try:
        result = vlm.generate_ids(np.asarray(ids, np.int64), "image" if image else None, generation,
                                  on_token=on_token.append, forced=forced)
    except InputError as error:
        scenario["error"] = {"kind": "InputError", "problem": error.problem}
        scenario["calls"] = recorder.calls
        return scenario
    scenario.update(token_ids=result.token_ids, stop_reason=result.stop_reason, prompt_tokens=result.prompt_tokens,
                    on_token=on_token, calls=recorder.calls,
                    logits=[row.tolist() for row in result.logits] if result.logits is not None else None,
                    decode_tokens=result.timings["decode_tokens"])
    return scenario


def first_new(tokens: list[int], start: int = 1) -> int:
    """A token whose first appearance is at index >= start: what an eos / stop token stops on."""
    return next(t for i, t in enumerate(tokens) if i >= start and t not in tokens[:i])


def decoder_scenarios() -> list[dict[str, Any]]:
    image_prompt = [1, 2, 3, 4] + [5] * 6 + [6, 20, 21, 22, 8]  # 15 tokens, image tokens 4..9
    text_prompt = [1, 2, 30, 31, 32, 33, 34, 8]
    open_image = run("probe", image_prompt, mrope=True, deep=True, image=True, max_new_tokens=10)["token_ids"]
    open_text = run("probe", text_prompt, mrope=False, max_new_tokens=10)["token_ids"]
    eos_image, stop_text = first_new(open_image, 2), first_new(open_text, 3)
    never = next(t for t in range(VOCAB) if t not in open_image + open_text)
    scenarios = [
        run("dynamic_mrope_image_deepstack_eos", image_prompt, mrope=True, deep=True, image=True, eos=(eos_image,),
            max_new_tokens=10),
        run("dynamic_1d_text_stop_token", text_prompt, mrope=False, eos=(never,), stop_token_ids=(stop_text,),
            max_new_tokens=10),
        run("dynamic_mrope_text_max_new_tokens", text_prompt, mrope=True, eos=(never,), max_new_tokens=4),
        run("dynamic_ignore_eos", image_prompt, mrope=True, deep=True, image=True, eos=(eos_image,),
            ignore_eos=True, max_new_tokens=10),
        run("dynamic_forced", image_prompt, mrope=True, image=True, eos=(eos_image,), forced=[7, 3, 9, 12],
            max_new_tokens=6),
        run("dynamic_context_exceeded", text_prompt, mrope=False, max_context=12, max_new_tokens=5),
    ]
    image_static = static_block(True, True, prefill=4, capacity=32, image_token=5)  # chunks 4+4+4+3
    scenarios += [
        run("static_mrope_image_deepstack_chunks_eos", image_prompt, mrope=True, deep=True, image=True,
            static=image_static, eos=(eos_image,), max_new_tokens=10),
        run("static_exact_prefill_length", text_prompt, mrope=False, static=static_block(False, False, 8, 24, 5),
            eos=(never,), max_new_tokens=5),
        run("static_prefill_then_decode_chunk", text_prompt, mrope=False,
            static=static_block(False, False, 7, 24, 5), eos=(never,), stop_token_ids=(stop_text,), max_new_tokens=10),
        run("static_image_token_zero_pads_with_one", text_prompt[:6], mrope=False,
            static=static_block(False, False, 4, 16, 0), max_new_tokens=3),
        run("static_forced", image_prompt, mrope=True, image=True, static=static_block(True, False, 4, 32, 5),
            forced=[7, 3, 9, 12], max_new_tokens=6),
        run("static_kv_capacity_full", text_prompt, mrope=False, static=static_block(False, False, 4, 12, 5),
            eos=(never,), max_new_tokens=8),
    ]
    by_name = {s["name"]: s for s in scenarios}
    for name, reason in (("dynamic_mrope_image_deepstack_eos", "eos"), ("dynamic_1d_text_stop_token", "stop_token"),
                         ("dynamic_mrope_text_max_new_tokens", "max_new_tokens"), ("dynamic_ignore_eos",
                         "max_new_tokens"), ("dynamic_forced", "forced"),
                         ("static_mrope_image_deepstack_chunks_eos", "eos"), ("static_forced", "forced")):
        assert by_name[name]["stop_reason"] == reason, (name, by_name[name]["stop_reason"])
    assert eos_image in by_name["dynamic_ignore_eos"]["token_ids"][:-1]
    # the padded static chunks compute what the one dynamic call does
    for dynamic, static in (("dynamic_mrope_image_deepstack_eos", "static_mrope_image_deepstack_chunks_eos"),
                            ("dynamic_forced", "static_forced")):
        assert by_name[dynamic]["token_ids"] == by_name[static]["token_ids"], (dynamic, static)
        assert by_name[dynamic]["logits"] == by_name[static]["logits"]
    assert "error" in by_name["static_kv_capacity_full"] and "error" in by_name["dynamic_context_exceeded"]
    return scenarios


def kv_full() -> dict[str, Any]:
    """The dynamic cache refusing more tokens than its capacity (KVCache.append)."""
    cache = KVCache(LAYERS, KV_HEADS, HEAD_DIM, 4)
    new = {f"present_{k}_{layer}": np.zeros((1, KV_HEADS, 3, HEAD_DIM), np.float32)
           for layer in range(LAYERS) for k in ("key", "value")}
    cache.append(new, 3)
    try:
        cache.append({k: v[:, :, :2] for k, v in new.items()}, 2)
    except InputError as error:
        return {"capacity": 4, "steps": [3, 2], "problem": error.problem}
    raise AssertionError("KVCache took more than its capacity")


# -- sampler ----------------------------------------------------------------------------------------------------------
def splitmix64(seed: int, count: int) -> list[int]:
    state, out = seed & MASK64, []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


# SplitMix64's published stream for seed 1234567 (Vigna's reference splitmix64.c)
assert splitmix64(1234567, 3) == [6457827717110365317, 3203168211198807973, 9817491932198370423]


def special(value: float) -> Any:
    return value if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))


def distribution(logits: np.ndarray, config: GenerationConfig) -> np.ndarray:
    """The probabilities the runtime's Sampler passes to its generator."""
    seen: list[np.ndarray] = []

    class Capture:
        @staticmethod
        def choice(size: int, p: np.ndarray) -> int:
            seen.append(np.array(p))
            return 0

    sampler = Sampler(config)
    sampler.rng = Capture()  # type: ignore[assignment]
    sampler(logits)
    return seen[0]


def sampler_cases() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    logits = {"normal50": rng.normal(0, 2, 50).astype(np.float32),
              "wide200": rng.normal(0, 6, 200).astype(np.float32),
              "ties": np.array([1, 3, 3, 2, 3, 0, -1], np.float32)}
    configs = [{}, {"temperature": 0.7, "top_k": 5}, {"top_p": 0.9}, {"temperature": 1.3, "top_k": 20, "top_p": 0.8},
               {"top_k": 1}, {"top_p": 0.05}, {"top_k": 1000}, {"temperature": 2.5, "top_p": 0.5}, {"top_k": 2}]
    cases = []
    for name, row in logits.items():
        for index, options in enumerate(configs):
            config = GenerationConfig(do_sample=True, **options)
            probs = distribution(row, config)
            seed = 1000 * len(cases) + 17
            uniforms = [(z >> 11) / 2.0**53 for z in splitmix64(seed, 12)]
            cdf = probs.cumsum()
            cdf /= cdf[-1]
            draws = [int(cdf.searchsorted(u, side="right")) for u in uniforms]
            cases.append({"name": f"{name}/{index}", "logits": row.tolist(), "options": options, "seed": seed,
                          "probabilities": probs.tolist(), "draws": draws})
    greedy = [[1, 3, 3, 2], [float("nan"), 2, float("nan")], [1, float("nan"), 5], [-math.inf, -math.inf],
              [0.5, math.inf, math.inf], [-2, -1, -1.5]]
    return {
        "cases": cases,
        "greedy": [{"logits": [special(v) for v in row], "argmax": int(np.argmax(np.asarray(row, np.float32)))}
                   for row in greedy],
        "splitmix": [{"seed": seed, "raw": [str(z) for z in splitmix64(seed, 6)]}
                     for seed in (0, 1, 1234567, 2**63 - 1)],
        "refusals": refusals(),
    }


def refusals() -> list[dict[str, Any]]:
    out = []
    for options in ({"max_new_tokens": 0}, {"max_new_tokens": -3}, {"temperature": 0.0}, {"temperature": -0.5},
                    {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}):
        try:
            GenerationConfig(**options)
        except InputError as error:
            out.append({"options": options, "problem": error.problem})
        else:
            raise AssertionError(f"GenerationConfig took {options}")
    return out


# -- prompt -----------------------------------------------------------------------------------------------------------
def prompt_cases() -> list[dict[str, Any]]:
    """App blocks as export/app_block.py writes them, and the ids / positions the runtime computes for whole prompts."""
    # the test tokenizer: a text -> ids table; the 1-D layout's text-only slot has plain text before and after the
    # user's (text_prefix / text_suffix, as a template writing "user\n" before it gets), tokenized with it in one piece
    texts = {"What is this?": [20, 21, 22], "x": [23], "user\nWhat is this?.": [30, 20, 21, 22, 31], "user\nx.": [32]}
    layouts = {"mrope": ([1, 2, 4] + [5] * 6 + [6], [1, 2], [8, 9, 10], ""),
               "1d": ([1, 2] + [5] * 9 + [3], [1, 2], [8, 9], "user\n")}
    cases = []
    for kind, (before, text_before, after, prefix) in layouts.items():
        mrope = kind == "mrope"
        suffix = "." if prefix else ""
        table, delta = prompt_positions(before + texts["x"] + after, mrope, True, 5)
        app = {"image": {"height": 56, "width": 84}, "image_tokens": before.count(5),
               "prompt": {"image": {"before": before, "text_prefix": "", "text_suffix": "", "after": after},
                          "text_only": {"before": text_before, "text_prefix": prefix, "text_suffix": suffix,
                                        "after": after}},
               "positions": {"before": table.reshape(-1, table.shape[-1])[:, : len(before)].tolist(),
                             "delta": int(delta)}}
        expected = []
        for text in ("What is this?", "x"):
            for with_image in (True, False):
                ids = texts[text] if with_image else texts[prefix + text + suffix]
                whole = (before if with_image else text_before) + ids + after
                positions, d = prompt_positions(whole, mrope, with_image, 5)
                expected.append({"text": text, "with_image": with_image, "ids": whole, "positions": tensor(positions),
                                 "delta": int(d)})
        cases.append({"kind": kind, "app": app, "texts": texts, "expected": expected})
    return cases


# -- zero-shot --------------------------------------------------------------------------------------------------------
def zero_shot_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    images = rng.normal(size=(4, 16)).astype(np.float32)
    images[3] = 0  # a zero embedding: l2_normalize keeps it zero (norm clamped to 1e-12)
    texts = rng.normal(size=(5, 16)).astype(np.float32)
    return [zero_shot_case(scoring, images, texts, ["cat", "dog", "red car", "tree", "a cup"])
            for scoring in (Scoring("softmax", 100.0, 0.0, "a photo of a {}."),
                            Scoring("sigmoid", 117.33, -12.93, "{}"))]


def zero_shot_case(scoring: Scoring, images: np.ndarray, texts: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """The runtime's scoring in float64 (what the engine computes) and in float32 (what the runtime runs)."""
    encoder = object.__new__(DualEncoder)
    encoder.scoring = scoring
    wide_images, wide_texts = l2_normalize(images.astype(np.float64)), l2_normalize(texts.astype(np.float64))
    logits = encoder.logits(wide_images, wide_texts)
    narrow = encoder.probabilities(encoder.logits(l2_normalize(images), l2_normalize(texts)))
    encoder.embed_image = lambda _: wide_images
    encoder.embed_text = lambda _: wide_texts
    ranked = encoder.classify([None] * len(images), [f" {label} " for label in labels])
    errors = {}
    for key, call in (("empty", lambda: encoder.classify([], ["cat", " "])),
                      ("duplicate", lambda: encoder.classify([], ["cat", "dog", "cat"])),
                      ("template", lambda: encoder.prompts(["cat"], "a photo"))):
        try:
            call()
        except InputError as error:
            errors[key] = error.problem
    assert len(errors) == 3
    return {"activation": scoring.activation, "logit_scale": scoring.logit_scale, "logit_bias": scoring.logit_bias,
            "prompt_template": scoring.prompt_template, "image_features": tensor(images),
            "text_features": tensor(texts), "labels": labels, "image_embeds": tensor(wide_images),
            "logits": tensor(logits), "probabilities": tensor(encoder.probabilities(logits)),
            "probabilities_float32": tensor(narrow), "prompts": encoder.prompts(labels),
            "ranked": [[{"label": p.label, "score": p.score} for p in row] for row in ranked], "errors": errors}


def write(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = {"generation_decoders.json": {"scenarios": decoder_scenarios(), "kv_full": kv_full()},
             "generation_sampler.json": sampler_cases(),
             "generation_prompt.json": {"cases": prompt_cases()},
             "generation_zero_shot.json": {"cases": zero_shot_cases()}}
    for name, value in files.items():
        (out / name).write_text(json.dumps(value, allow_nan=False))
    rowloop.write(out)  # the static-shape row loop's cases (RowLoopTest.kt), with the static decoders' here
