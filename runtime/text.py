"""Tokenization from the bundle's ``tokenizer.json`` with the padding rule the model was trained with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def check_text(text: object, what: str = "text") -> str:
    """A ``str`` the tokenizer can take: one that encodes as UTF-8. Lone surrogates arrive from undecodable
    command-line bytes (Python's surrogateescape) or broken JSON escapes, and ``tokenizers`` rejects them with a
    bare ``TypeError``."""
    if not isinstance(text, str):
        raise InputError(f"the {what} must be text, got {type(text).__name__}", f"pass the {what} as a str")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"the {what} is not valid Unicode (a lone surrogate at character {exc.start})",
                         f"pass the {what} as UTF-8 text (check the terminal's or file's encoding)") from exc
    return text


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
        return list(self._tok.encode(check_text(text, "prompt"), add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def stream(self) -> TextStream:
        """An incremental decoder over this tokenizer, for streaming generated text."""
        return TextStream(self.decode)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Texts -> ``input_ids`` and ``attention_mask`` (int64, [batch, length])."""
        if not texts:
            raise InputError("no text given", "pass at least one non-empty text or label")
        for text in texts:
            check_text(text)
        encodings = self._tok.encode_batch(texts)
        length = self.config.max_length if self.config.padding == "max_length" else max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), length), self.config.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}


REPLACEMENT = "\ufffd"  # what a byte-level decoder yields for an incomplete (or invalid) UTF-8 sequence


class TextStream:
    """Incremental detokenisation: a bounded window of ids decoded per token instead of the whole sequence each step.

    As in Hugging Face's text-generation-inference, the window holds the last emitted piece's ids as context (so
    that decoders that treat a sequence's first token specially, e.g. strip its leading space, treat both decodes
    alike) and the ids not emitted yet. Each token decodes the context (once, cached) and the whole window; the new
    suffix is emitted once it does not end in an incomplete UTF-8 sequence (``U+FFFD``), and the window moves up.
    Text held back for more than ``max_held`` tokens is emitted as it stands (invalid bytes), or forgotten when it
    adds nothing (skipped special tokens), so the window stays bounded. ``finish`` takes the full decode and returns
    what is left of it. The pieces add up to exactly the full decode for valid UTF-8, and for byte-level BPE always;
    a decoder whose output for invalid bytes depends on far context (``ByteFallback`` turns a whole run of byte
    tokens into U+FFFD for one bad byte) can stream such bytes differently from its full decode.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], max_held: int = 8) -> None:
        self._decode = decode
        self.max_held = max_held
        self._window: list[int] = []  # context ids, then the ids not emitted yet (from ``_read``)
        self._read = 0
        self._context_text: str | None = ""  # decode(window[:read]); None until needed after the window moved
        self.emitted = 0  # characters emitted so far

    def push(self, token: int) -> str:
        """Add one generated id; returns the newly complete text ("" when there is none yet)."""
        self._window.append(token)
        if self._context_text is None:
            self._context_text = self._decode(self._window[: self._read])
        text = self._decode(self._window)
        grew = len(text) > len(self._context_text)
        if not grew or text.endswith(REPLACEMENT):
            if len(self._window) - self._read <= self.max_held:
                return ""
            if not grew:  # nothing visible in the held ids (e.g. special tokens skipped by decode): drop them
                del self._window[self._read :]
                return ""
        piece = text[len(self._context_text) :]
        self._window = self._window[self._read :]
        self._read, self._context_text = len(self._window), None
        self.emitted += len(piece)
        return piece

    def finish(self, full_text: str) -> str:
        """The rest of ``full_text`` (the decode of all ids) after what ``push`` emitted: held-back text at the end,
        e.g. a trailing incomplete character."""
        return full_text[self.emitted :]
