"""Captioning and question answering over a VLM bundle (``vision_encoder`` + ``text_decoder``), any backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketvlm.runtime import idefics3, qwen_vl
from pocketvlm.runtime.backends import Session, open_session, turns
from pocketvlm.runtime.errors import BundleError, InputError
from pocketvlm.runtime.generation import GenerationConfig, KVCache, Sampler
from pocketvlm.runtime.image import DEFAULT_MAX_PIXELS, ImageInput, load_image
from pocketvlm.runtime.manifest import Bundle, load_bundle, reading_fields
from pocketvlm.runtime.template import ChatTemplate
from pocketvlm.runtime.text import TextConfig, TextTokenizer

if TYPE_CHECKING:
    from pocketvlm.runtime.coreml import PredictorFactory

DEFAULT_CAPTION_PROMPT = "Describe this image."
ADAPTERS = {"qwen2_vl": qwen_vl.QwenAdapter, "idefics3": idefics3.Idefics3Adapter}


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    stop_reason: str  # "eos" | "stop_token" | "max_new_tokens" | "forced"
    timings: dict[str, float] = field(default_factory=dict)
    logits: list[np.ndarray] | None = None  # per step, when teacher-forced


class VisionLanguageModel:
    def __init__(self, bundle: Bundle, sessions: dict[str, Session], max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        manifest = bundle.manifest
        self.bundle, self.sessions, self.max_pixels = bundle, sessions, max_pixels
        self.turns = turns(sessions.values())  # a request at a time unless every session is reentrant (ONNX)
        with reading_fields(bundle, "VLM"):
            self.image_config = manifest["preprocessing"]["image"]
            if self.image_config["kind"] not in ADAPTERS:
                raise BundleError(f"image preprocessing '{self.image_config['kind']}' is not supported by this runtime",
                                  "upgrade pocketvlm")
            text_config = TextConfig.from_json(manifest["tokenizer"])
            self.tokenizer = TextTokenizer(bundle.file(text_config.file), text_config)
            self.template = ChatTemplate.from_file(bundle.file(manifest["chat_template"]))
            self.special = manifest["special_tokens"]
            self.adapter = ADAPTERS[self.image_config["kind"]](self.image_config, self.special)
            self.decoder = manifest["decoder"]
            self.eos_ids = set(manifest["generation"]["eos_token_ids"])
            self.max_context = int(manifest["generation"]["max_context"])

    @classmethod
    def load(cls, path: Path | str | Bundle, providers: dict[str, list[str]] | None = None, threads: int = 0,
             max_pixels: int = DEFAULT_MAX_PIXELS, predictor: PredictorFactory | None = None) -> VisionLanguageModel:
        """``providers`` may differ per component (e.g. the vision side on an NPU provider, the decoder on CPU);
        ``predictor`` runs Core ML packages (default: Core ML itself on macOS; see ``backends.open_session``)."""
        bundle = path if isinstance(path, Bundle) else load_bundle(path)
        if bundle.manifest.get("task") != "image_text_to_text":
            raise BundleError(f"bundle {bundle.path} is a {bundle.manifest.get('task')} bundle, not a VLM",
                              "use caption/ask with a VLM bundle (qwen2_vl, ...)")
        split = "vision_frontend" in bundle.components
        names = ("vision_frontend", "vision_transformer") if split else ("vision_encoder",)
        for name in (*names, "text_decoder"):
            bundle.component(name)
        sessions = {name: open_session(bundle, name, (providers or {}).get(name), threads, predictor)
                    for name in (*names, "text_decoder")}
        return cls(bundle, sessions, max_pixels=max_pixels)

    # -- prompt ------------------------------------------------------------------------------------------------------
    def render(self, prompt: str, with_image: bool = True) -> str:
        content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": prompt})
        return self.template.render(messages=[{"role": "user", "content": content}], add_generation_prompt=True)

    def prepare(self, image: ImageInput | None, prompt: str) -> tuple[np.ndarray, Any]:
        """Prompt + image -> input_ids (image placeholder expanded to the image's token count) and vision inputs.
        Without an image the prompt is text only and the vision inputs are ``None``."""
        if not prompt.strip():
            raise InputError("the prompt is empty", "pass a question or instruction")
        if image is None:
            return np.asarray(self.tokenizer.encode_plain(self.render(prompt, with_image=False)), np.int64), None
        processed = self.adapter.preprocess(load_image(image, self.max_pixels))
        text = self.adapter.expand(self.render(prompt), processed)
        ids = np.asarray(self.tokenizer.encode_plain(text), dtype=np.int64)
        return ids, processed

    # -- generation ----------------------------------------------------------------------------------------------------
    def encode_image(self, processed: Any) -> dict[str, np.ndarray]:
        """-> ``image_embeds`` (and ``deepstack_embeds`` for Qwen3-VL). ``None`` (a text-only prompt) gives the one
        unused zero row per input that the decoder graph still needs."""
        if processed is None:
            spec = self.bundle.component("text_decoder")
            return {t.name: np.zeros([d if isinstance(d, int) else 1 for d in t.shape], dtype=np.float32)
                    for t in spec.inputs if t.name in ("image_embeds", "deepstack_embeds")}
        feeds = self.adapter.vision_feeds(processed)
        if "vision_frontend" in self.sessions:  # split vision side: two stages, possibly on different providers
            feeds["vision_hidden"] = self.sessions["vision_frontend"].run(feeds)["vision_hidden"]
            return self.sessions["vision_transformer"].run(feeds)
        return self.sessions["vision_encoder"].run(feeds)

    def generate_ids(self, input_ids: np.ndarray, processed: Any, config: GenerationConfig,
                     on_token: Callable[[int], None] | None = None,
                     forced: list[int] | None = None) -> GenerationResult:
        """Generate from prepared inputs. With ``forced`` tokens (teacher forcing), each step feeds the forced token
        instead of the chosen one, never stops early, and the result carries every step's logits."""
        if len(input_ids) + config.max_new_tokens > self.max_context:
            raise InputError(f"prompt of {len(input_ids)} tokens + {config.max_new_tokens} new tokens exceeds the "
                             f"model's context of {self.max_context}", "shorten the prompt or lower --max-new-tokens")
        with self.turns:  # a decoder that owns its KV cache serves one sequence at a time
            return self._generate(input_ids, processed, config, on_token, forced)

    def _generate(self, input_ids: np.ndarray, processed: Any, config: GenerationConfig,
                  on_token: Callable[[int], None] | None, forced: list[int] | None) -> GenerationResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        vision = self.encode_image(processed)
        timings["image_encode_s"] = time.perf_counter() - started
        positions, delta = self.adapter.positions(input_ids, processed)
        decoder = self.sessions["text_decoder"]
        decoder.reset()
        cache = KVCache(self.decoder["num_layers"], self.decoder["kv_heads"], self.decoder["head_dim"],
                        len(input_ids) + config.max_new_tokens, track_only=decoder.owns_kv_cache)
        sampler, stops = Sampler(config), self.eos_ids | set(config.stop_token_ids)
        step_ids, step_positions, tokens, reason = input_ids[None, :], positions, [], "max_new_tokens"
        all_logits: list[np.ndarray] = []
        started = time.perf_counter()
        while len(tokens) < config.max_new_tokens:
            new = step_ids.shape[1]
            outputs = decoder.run({"input_ids": step_ids, "position_ids": step_positions, **vision,
                                   "attention_mask": cache.attention_mask(new), **cache.buffers})
            cache.append(outputs, new)
            if not tokens:
                timings["prefill_s"] = time.perf_counter() - started
                # decode steps carry no image tokens; the graph still needs one (unused) row
                vision = {"image_embeds": vision["image_embeds"][:1],
                          **({"deepstack_embeds": vision["deepstack_embeds"][:, :1]} if "deepstack_embeds" in vision
                             else {})}
                started = time.perf_counter()
            token = sampler(outputs["logits"][0])
            tokens.append(token)
            if on_token:
                on_token(token)
            if forced is not None:
                all_logits.append(outputs["logits"][0].copy())
                if len(tokens) >= len(forced):
                    reason = "forced"
                    break
                token = forced[len(tokens) - 1]
            elif token in stops and not config.ignore_eos:
                reason = "eos" if token in self.eos_ids else "stop_token"
                break
            step_ids = np.array([[token]], dtype=np.int64)
            step_positions = self.adapter.step_position(cache.filled + delta)
        timings["decode_s"] = time.perf_counter() - started
        timings["decode_tokens"] = max(len(tokens) - 1, 0)
        text = self.tokenizer.decode([t for t in tokens if t not in stops])
        return GenerationResult(text, tokens, len(input_ids), reason, timings, all_logits if forced else None)

    def generate(self, image: ImageInput | None, prompt: str = DEFAULT_CAPTION_PROMPT,
                 config: GenerationConfig | None = None,
                 on_text: Callable[[str], None] | None = None) -> GenerationResult:
        """Caption or answer (``image=None``: a text-only prompt); ``on_text`` receives the text as it grows
        (complete characters only; the pieces add up to ``result.text``), decoding a few ids per token."""
        input_ids, processed = self.prepare(image, prompt)
        config = config or GenerationConfig()
        if on_text is None:
            return self.generate_ids(input_ids, processed, config)
        stream, stops = self.tokenizer.stream(), self.eos_ids | set(config.stop_token_ids)

        def push(token: int) -> None:
            piece = stream.push(token) if token not in stops else ""
            if piece:
                on_text(piece)

        result = self.generate_ids(input_ids, processed, config, on_token=push)
        rest = stream.finish(result.text)
        if rest:
            on_text(rest)
        return result
