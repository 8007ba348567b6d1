"""Seeded random checkpoints of any registered family, written as real Hugging Face checkpoint directories.

No weights can be downloaded here, so tests, the demo and full-size benchmarks build checkpoints of the real
architectures with random (seeded) weights and export them through exactly the same path as a user's checkpoint.
"""

from __future__ import annotations

import gzip
import inspect
import shutil
from pathlib import Path
from typing import Any

import torch

from pocketvlm.export.hf_quiet import quiet_transformers
from pocketvlm.export.registry import get_family

ASSETS = Path(__file__).parent / "assets"
CLIP_BPE = ASSETS / "clip_bpe_tokenizer.json.gz"  # OpenAI CLIP's BPE (MIT), converted from open_clip_torch 3.3.0

_CORPUS = [
    "a photo of a cat", "a photo of a dog", "a photo of a rocket", "a photo of an astronaut", "a cup of coffee",
    "a red circle", "a blue triangle", "a green rectangle", "a yellow square", "a grey camera man", "the moon",
    "this is a photo of a horse", "a chelsea cat on a table", "text on a page", "a bright colourful chart",
    "a close-up of coins", "a brick wall", "an old photograph", "a microscope image of cells", "the sky at night",
]

# Special tokens per tokenizer style: (tokens in id order, template added around a sequence)
_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
_IDEFICS3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                      "<global-img>", *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))]
_STYLES = {
    "clip": (["<|startoftext|>", "<|endoftext|>"], "<|startoftext|> $A <|endoftext|>"),
    "siglip": (["<pad>", "</s>", "<unk>"], "$A </s>"),
    "qwen2_vl": (_QWEN_SPECIALS, None),
    "idefics3": (_IDEFICS3_SPECIALS, None),
}
# config keys of the tiny configs that name special tokens, per tokenizer style
_CONFIG_TOKENS = {
    "qwen2_vl": {"image_token_id": "<|image_pad|>", "vision_start_token_id": "<|vision_start|>",
                 "vision_end_token_id": "<|vision_end|>", "video_token_id": "<|video_pad|>"},
    "idefics3": {"image_token_id": "<image>"},
}
# SmolVLM's chat template, reduced to what the runtime supports
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# Qwen2-VL's chat template, reduced to what the runtime supports (system/user/assistant, images, text)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(style: str, vocab_size: int = 512) -> Any:
    """A small byte-level BPE trained on a fixed corpus (deterministic), wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials, template = _STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, tok.token_to_id(t)) for t in specials if t in template])
    names = {"clip": dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                          unk_token="<|endoftext|>"),
             "siglip": dict(eos_token="</s>", pad_token="<pad>", unk_token="<unk>"),
             "qwen2_vl": dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
             "idefics3": dict(eos_token="<end_of_utterance>", pad_token="<|endoftext|>")}[style]
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=77 if template else 1024, **names)
    if style in ("qwen2_vl", "idefics3"):
        wrapped.chat_template = QWEN_CHAT_TEMPLATE if style == "qwen2_vl" else IDEFICS3_CHAT_TEMPLATE
    return wrapped


def _style(family: str) -> str:
    return family if family in _STYLES else "qwen2_vl"


def clip_bpe_tokenizer() -> Any:
    """The real CLIP BPE tokenizer (49,408 tokens) from the committed asset."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(gzip.decompress(CLIP_BPE.read_bytes()).decode("utf-8"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=77)


def build_checkpoint(family: str, out_dir: Path, seed: int = 0, tokenizer: Any = None, init_std: float | None = None,
                     **sizes: Any) -> Path:
    """Write ``out_dir`` as a save_pretrained() checkpoint of ``family`` with seeded random weights."""
    with quiet_transformers():
        return _build(family, Path(out_dir), seed, tokenizer, init_std, sizes)


def _build(family: str, out_dir: Path, seed: int, tokenizer: Any, init_std: float | None, sizes: dict) -> Path:
    spec = get_family(family)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if tokenizer is None:
        tokenizer = train_tokenizer(_style(family), vocab_size=min(int(sizes.get("vocab_size", 512)), 512))
    sizes.setdefault("vocab_size", len(tokenizer))
    accepted = inspect.signature(spec.tiny_config).parameters
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        token_id = getattr(tokenizer, key, None)
        if token_id is not None and key in accepted:
            sizes.setdefault(key, token_id)
    for key, token in _CONFIG_TOKENS.get(_style(family), {}).items():
        if key in accepted:
            sizes.setdefault(key, tokenizer.convert_tokens_to_ids(token))
    config = spec.tiny_config(**sizes)
    if init_std is not None:
        for part in (config, config.text_config, config.vision_config):
            part.initializer_range = init_std
    torch.manual_seed(seed)
    model = spec.from_config(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    spec.default_processor(config).save_pretrained(str(out_dir))
    return out_dir
