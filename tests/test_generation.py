"""Streaming text: incremental detokenisation decodes O(1) ids per token, and the pieces add up to the full decode."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers

from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.text import REPLACEMENT, TextConfig, TextStream, TextTokenizer

ASSETS = Path(__file__).resolve().parents[1] / "export" / "assets"
# multi-byte characters that a small byte-level BPE splits into single bytes across tokens: accents (2 bytes), CJK
# (3), emoji (4), a ZWJ family and a flag (several code points), and U+FFFD itself, written by the model
TEXT = ("Un chat 🐱 sur la table: naïve café, 猫が好きです。 Family 👩‍👩‍👧 and flag 🇯🇵 — "
        "mixed 😀😀 ascii, plus a literal \ufffd and a tail é")


def byte_bpe(tmp_path: Path, style: str) -> TextTokenizer:
    """The runtime's tokenizer over a tokenizer.json as bundles package it (the synthetic checkpoints' BPE)."""
    from pocketvlm.export.synthetic import train_tokenizer
    from pocketvlm.export.tokenizer import write_tokenizer

    path = tmp_path / f"{style}.json"
    write_tokenizer(train_tokenizer(style), path)
    return TextTokenizer(path, TextConfig(path.name, 4096, "longest", 0))


def clip_bpe(tmp_path: Path) -> TextTokenizer:
    path = tmp_path / "clip.json"
    path.write_bytes(gzip.decompress((ASSETS / "clip_bpe_tokenizer.json.gz").read_bytes()))
    return TextTokenizer(path, TextConfig(path.name, 4096, "longest", 0))


def byte_fallback(tmp_path: Path) -> TextTokenizer:
    """A Llama / SentencePiece-style tokenizer: Metaspace words, <0xXX> byte-fallback tokens for anything outside the
    vocabulary, and a decoder that strips the sequence's first space (the case that needs the prefix window)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for word in ("▁Un", "▁chat", "▁sur", "▁la", "▁table", "▁and", "▁a", "▁tail", "▁", "a", "e", "t", "s", ":", ","):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<s>", "</s>"])
    path = tmp_path / "fallback.json"
    path.write_text(tok.to_str())
    return TextTokenizer(path, TextConfig(path.name, 4096, "longest", 0))


def stream_all(stream: TextStream, ids: list[int], full: str) -> list[str]:
    pieces = [stream.push(i) for i in ids]
    return [*pieces, stream.finish(full)]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TextTokenizer]:
    tmp = tmp_path_factory.mktemp("tokenizers")
    return {"qwen2_vl": byte_bpe(tmp, "qwen2_vl"), "idefics3": byte_bpe(tmp, "idefics3"), "clip": clip_bpe(tmp),
            "byte_fallback": byte_fallback(tmp)}


@pytest.mark.parametrize("name", ["qwen2_vl", "idefics3", "clip", "byte_fallback"])
def test_streamed_pieces_add_up_to_the_full_decode(tokenizers, name):
    tok = tokenizers[name]
    ids = tok.encode_plain(TEXT)
    full = tok.decode(ids)
    assert "🐱" in full and "猫" in full  # the tokenizer round-trips the text
    split = sum(REPLACEMENT in tok.decode([i]) for i in ids)
    assert split > 10, "multi-byte characters should be split across tokens"
    pieces = stream_all(tok.stream(), ids, full)
    assert "".join(pieces) == full
    # no piece ends inside a character; the one literal U+FFFD of the text arrives with the character after it
    assert all(not p.endswith(REPLACEMENT) for p in pieces)
    assert sum(bool(p) for p in pieces) > len(TEXT.split()) // 2, "text should stream, not arrive at the end"


@pytest.mark.parametrize("name", ["qwen2_vl", "idefics3"])
def test_random_ids_and_special_tokens_stream_to_the_full_decode(tokenizers, name):
    """Byte-level BPE: any id sequence (invalid UTF-8, special tokens that decode to nothing) streams to exactly the
    full decode, since its decoder replaces each invalid byte run locally. (A ByteFallback decoder does not: one
    invalid byte turns a whole run of byte tokens into U+FFFD, so a run that streamed as valid characters can decode
    differently in full; valid text streams exactly there too, as the test above checks.)"""
    tok = tokenizers[name]
    vocab = tok._tok.get_vocab_size()
    for seed in range(20):
        ids = [int(i) for i in np.random.default_rng(seed).integers(0, vocab, 200)]
        full = tok.decode(ids)
        assert "".join(stream_all(tok.stream(), ids, full)) == full, seed


def counting(tok: TextTokenizer) -> tuple[TextStream, list[int]]:
    sizes: list[int] = []

    def decode(ids):
        sizes.append(len(ids))
        return tok.decode(ids)

    return TextStream(decode), sizes


@pytest.mark.parametrize("name", ["qwen2_vl", "byte_fallback"])
def test_streaming_decodes_a_bounded_window_per_token(tokenizers, name):
    """512 tokens: the ids decoded grow linearly (the old loop re-decoded everything: 512 * 513 / 2 = 131,328 ids)."""
    tok = tokenizers[name]
    ids = (tok.encode_plain(TEXT) * 40)[:512]
    totals = {}
    for n in (256, 512):
        stream, sizes = counting(tok)
        pieces = stream_all(stream, ids[:n], tok.decode(ids[:n]))
        assert "".join(pieces) == tok.decode(ids[:n])
        assert len(sizes) <= 2 * n and max(sizes) <= 2 * stream.max_held + 2
        totals[n] = sum(sizes)
    assert totals[512] <= 8 * 512, totals
    assert 1.8 <= totals[512] / totals[256] <= 2.2, totals


def test_held_text_stays_bounded_on_invalid_bytes_and_silent_tokens(tokenizers):
    """Ids that never complete a character (lone continuation bytes) or add no text (special tokens) are emitted
    after ``max_held`` tokens, so the decoded window stays bounded; the pieces still add up to the full decode."""
    tok = tokenizers["byte_fallback"]
    continuation = [3 + 0x80 + i % 64 for i in range(512)]  # <0x80>..<0xBF>: each one an invalid byte
    silent = [2] * 512  # </s>, skipped when decoding
    for ids in (continuation, silent, continuation[:100] + silent[:100] + tok.encode_plain(TEXT)):
        stream, sizes = counting(tok)
        full = tok.decode(ids)
        assert "".join(stream_all(stream, ids, full)) == full
        assert max(sizes) <= 2 * stream.max_held + 2 and sum(sizes) <= 16 * len(ids), (max(sizes), sum(sizes))


def test_generate_streams_with_few_ids_per_token(workspace, photos):
    """Through the VLM's generation loop: the streamed pieces are the result's text, and the ids decoded for
    streaming are linear in the tokens generated (plus one full decode of the result)."""
    from pocketvlm.runtime.vlm import VisionLanguageModel

    model = VisionLanguageModel.load(workspace.bundle("qwen2_vl", "fp32", "varied"))
    decoded: list[int] = []
    original = model.tokenizer.decode

    def decode(ids):
        decoded.append(len(ids))
        return original(ids)

    model.tokenizer.decode = decode
    pieces: list[str] = []
    result = model.generate(photos["chelsea"].resize((120, 90)), config=GenerationConfig(max_new_tokens=64,
                                                                                           ignore_eos=True),
                            on_text=pieces.append)
    assert len(result.token_ids) == 64 and "".join(pieces) == result.text and len(pieces) > 8
    assert sum(decoded) <= 8 * 64 + 64, json.dumps(decoded)
