"""Tokenization from the bundle's ``tokenizer.json`` with the padding rule the model was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from pocketvlm.runtime.errors import BundleError, InputError


@dataclass(frozen=True)
class TextConfig:
    """The manifest's ``tokenizer`` block."""

    file: str
    max_length: int
    padding: str  # "longest" (CLIP) or "max_length" (SigLIP)
    pad_token_id: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TextConfig:
        return cls(file=data["file"], max_length=int(data["max_length"]), padding=data["padding"],
                   pad_token_id=int(data["pad_token_id"]))

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "max_length": self.max_length, "padding": self.padding,
                "pad_token_id": self.pad_token_id, "padding_side": "right", "truncation": True}


class TextTokenizer:
    def __init__(self, path: Path, config: TextConfig) -> None:
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise BundleError(f"cannot load tokenizer {path}: {exc}", "re-export the bundle") from exc
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=config.max_length)
        self.config = config

    def encode_plain(self, text: str) -> list[int]:
        """One already-templated prompt -> ids, no special tokens added (chat templates carry their own)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Texts -> ``input_ids`` and ``attention_mask`` (int64, [batch, length])."""
        if not texts:
            raise InputError("no text given", "pass at least one non-empty text or label")
        if not all(isinstance(t, str) for t in texts):
            raise InputError("texts must be strings", "pass a list of str")
        encodings = self._tok.encode_batch(texts)
        length = self.config.max_length if self.config.padding == "max_length" else max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), length), self.config.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}
