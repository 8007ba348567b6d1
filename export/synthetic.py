"""Seeded random checkpoints of any registered family, written as real Hugging Face checkpoint directories.

No weights can be downloaded here, so tests, the demo and full-size benchmarks build checkpoints of the real
architectures with random (seeded) weights and export them through exactly the same path as a user's checkpoint.
"""

from __future__ import annotations

import gzip
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
_STYLES = {
    "clip": (["<|startoftext|>", "<|endoftext|>"], "<|startoftext|> $A <|endoftext|>"),
    "siglip": (["<pad>", "</s>", "<unk>"], "$A </s>"),
}


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
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, tok.token_to_id(t)) for t in specials if t in template])
    names = {"clip": dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                          unk_token="<|endoftext|>"),
             "siglip": dict(eos_token="</s>", pad_token="<pad>", unk_token="<unk>")}[style]
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=77, **names)


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
        tokenizer = train_tokenizer(family, vocab_size=min(int(sizes.get("vocab_size", 512)), 512))
    sizes.setdefault("vocab_size", len(tokenizer))
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        token_id = getattr(tokenizer, key, None)
        if token_id is not None and key in spec.tiny_config.__code__.co_varnames:
            sizes.setdefault(key, token_id)
    config = spec.tiny_config(**sizes)
    if init_std is not None:
        config.initializer_range = init_std
        config.text_config.initializer_range = init_std
        config.vision_config.initializer_range = init_std
    torch.manual_seed(seed)
    model = spec.from_config(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    spec.default_processor(config).save_pretrained(str(out_dir))
    return out_dir
