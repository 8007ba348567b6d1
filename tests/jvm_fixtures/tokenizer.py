"""Tokenizer fixtures for the engine core's JVM tests (TokenizerTest.kt).

``write(out)`` puts under ``out/tokenizer/`` one ``tokenizer.json`` per vocabulary, written by the exporter's own
``write_tokenizer``, and beside each one the Python side's answers for a seeded set of strings: ids from
``TextTokenizer.encode_plain``, padded batches from ``TextTokenizer.encode`` under the bundle's ``TokenizerSpec``,
``decode`` (with and without special tokens) and the pieces of ``TextTokenizer.stream()`` for the ids of every
string and for random and byte-broken id sequences. ``index.json`` lists them.

The vocabularies: SmolLM2 as the shapes captioner ships it (its GGUF's tokenizer plus the three image tokens),
OpenAI CLIP (the committed BPE asset), a Qwen2 pipeline (NFC, the Qwen2 Split regex, ByteLevel without regex) over
SmolLM2's vocabulary with added tokens that use lstrip/rstrip/single_word/normalized, and the tiny byte-level BPEs
that ``export.synthetic`` trains for the clip, siglip, qwen2_vl and idefics3 test checkpoints. Two more,
trained here, use every other stage the app runs (Strip, Prepend, Replace, NFKC/NFKD, Lowercase, Digits, each Split
behavior and invert, BertProcessing in a Sequence, unk_token with fuse_unk, byte_fallback, ignore_merges, a
continuing_subword_prefix and end_of_word_suffix, no decoder).
"""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, models, trainers
from tokenizers import normalizers as norm
from tokenizers import pre_tokenizers as pre
from tokenizers import processors as post

from pocketvlm.export.synthetic import clip_bpe_tokenizer, train_tokenizer
from pocketvlm.export.tokenizer import write_tokenizer
from pocketvlm.runtime.text import TextConfig, TextTokenizer

SEED = 20240611
STRINGS = 1100  # per real vocabulary; the tiny ones take the first TINY_STRINGS
TINY_STRINGS = 400
RANDOM_SEQUENCES = 250
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
SPECIAL_TEXTS = ["<image>", "<|im_end|>", "<|im_start|>", "<fake_token_around_image>", "<global-img>",
                 "<|startoftext|>", "<|endoftext|>", "<|image_pad|>", "<mask>", "</s>", "<pad>"]

WORDS = ["the", "a", "photo", "of", "cat", "dog", "rocket", "astronaut", "coffee", "red", "circle", "blue", "triangle",
         "green", "square", "grey", "camera", "man", "moon", "horse", "table", "text", "page", "bright", "colourful",
         "chart", "coins", "brick", "wall", "old", "photograph", "microscope", "cells", "sky", "night", "hello",
         "world", "quick", "brown", "fox", "jumps", "over", "lazy", "tokenizer", "byte", "pair", "encoding", "Android",
         "engine", "runs", "models", "on", "phones", "quickly", "and", "quietly", "while", "batteries", "last"]
ACCENTED = ["café", "naïve", "résumé", "Über", "façade", "jalapeño", "Ångström", "São Paulo", "Kraków", "Dvořák",
            "Tiếng Việt", "crème brûlée", "Smørrebrød", "piñata", "Zürich", "coöperate", "Łódź", "Ærøskøbing"]
SCRIPTS = ["ΟΔΟΣ ΣΑΣ ΣΟΦΙΑ ΣΙΣΥΦΟΣ", "Привет, как дела?", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
           "สวัสดีชาวโลก", "İstanbul ılık IĞDIR", "STRASSE straße ẞ", "Բարեւ աշխարհ", "გამარჯობა", "Ꭰ Ꭱ Ꭲ",
           "ḰḱẞǅǄǆ ﬁ ﬀ ŉ", "Ⅰ Ⅱ Ⅻ ⅻ", "ΆΈΉ ΐ ΰ", "ǰ ẖ ẘ ẙ ẚ"]
EMOJI = ["😀", "👍", "👍🏻", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "👩🏽‍💻", "🏳️‍🌈", "🇫🇷", "🇯🇵", "1️⃣", "❤️", "🤷‍♀️", "🧑🏾‍🚀",
         "☕", "✨", "🚀", "🐈‍⬛", "👁️‍🗨️", "🫠"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u2029",
          "\u0085", "\u1680", "\u2009", "\u202f", "\u205f", "\u200b", "\ufeff", "\x0b", "\x0c", "\x1c", " \n ",
          "\u180e", "\u200d"]
DIGITS = ["٠١٢٣٤٥٦٧٨٩", "०१२३", "１２３４", "²³¹", "½¾", "Ⅻ", "𝟘𝟙𝟚", "3.14159", "1,000,000", "0x1F", "2024-06-11",
          "12:30:45", "+44 20 7946 0958", "1e-9", "٣٫١٤"]
CONTRACTIONS = ["don't", "I'm", "you're", "we've", "they'll", "she'd", "it's", "DON'T", "I'M", "YOU'RE", "WE'VE",
                "don’t", "'s", "'S", "'ſ", "'ll've", "rock 'n' roll", "o'clock", "'tis", "y'all'd've", "ʼs"]
ADDED_EDGES = ["x <mask> y", "x<mask>y", "  <mask>  ", "Bonjour monde", "aBonjour", "Bonjour_", "(Bonjour)",
               "Café", "Cafe\u0301 au lait", "un Café noir, Cafe\u0301 noir ﬁx fix", "<MASK>",
               "<|IM_END|>", "<|STARTOFTEXT|>a photo<|ENDOFTEXT|>"]
# Code point ranges for random text, all assigned long before the Unicode versions of the JVMs and Rust crates
RANGES = [(0x20, 0x7E), (0x00, 0x1F), (0x80, 0xFF), (0x100, 0x24F), (0x250, 0x2AF), (0x300, 0x36F), (0x370, 0x3FF),
          (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF),
          (0x2000, 0x206F), (0x20A0, 0x20B8), (0x2100, 0x214F), (0x2190, 0x21FF), (0x3000, 0x303F), (0x3040, 0x30FF),
          (0x4E00, 0x9FA5), (0xAC00, 0xD7A3), (0xE000, 0xE0FF), (0xFB00, 0xFB06), (0xFF00, 0xFFEE), (0xFFFC, 0xFFFD),
          (0x1D400, 0x1D4FF), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x10000, 0x1007F)]


def _sentence(rng: random.Random, n: int | None = None) -> str:
    words = [rng.choice(WORDS) for _ in range(n or rng.randint(1, 12))]
    words = [w.capitalize() if rng.random() < 0.2 else w.upper() if rng.random() < 0.05 else w for w in words]
    out = " ".join(words)
    for _ in range(rng.randint(0, 2)):
        at = rng.randint(0, len(out))
        out = out[:at] + rng.choice(list(".,!?;:-()\"'/&%$#@*[]{}<>|_~`^=+")) + out[at:]
    return out


def _combining(rng: random.Random) -> str:
    return "".join(rng.choice("aeiouncsAEIOUz") + "".join(chr(rng.randint(0x300, 0x36F))
                                                        for _ in range(rng.randint(1, 3)))
                   for _ in range(rng.randint(1, 5)))


def _cjk(rng: random.Random) -> str:
    blocks = [(0x4E00, 0x9FA5), (0x3041, 0x3096), (0x30A1, 0x30FA), (0xAC00, 0xD7A3)]
    lo, hi = rng.choice(blocks)
    text = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 20)))
    return text + rng.choice(["", "。", "、", "！", "？", "「引用」", " ok"])


def _random_text(rng: random.Random, length: int) -> str:
    out = []
    while len(out) < length:
        lo, hi = rng.choice(RANGES)
        ch = chr(rng.randint(lo, hi))
        if unicodedata.category(ch) not in ("Cn", "Cs"):
            out.append(ch)
    return "".join(out)


def _long(rng: random.Random) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.choice("abz") * rng.randint(100, 3000)
    if kind == 1:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(300, 1000)))
    if kind == 2:
        return "supercalifragilistic" * rng.randint(5, 40)
    if kind == 3:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(50, 400)))
    if kind == 4:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(20, 120)))
    if kind == 5:
        return _cjk(rng) * rng.randint(10, 30)
    return rng.choice(SPACES) * rng.randint(20, 300) + "x"


def _nfc_nfd(rng: random.Random) -> list[str]:
    word = rng.choice(ACCENTED + ["한국어 문장", "ドイツ語", "Å Ω K ﬁ", "ệ ḉ ǖ"])
    return [unicodedata.normalize("NFC", word), unicodedata.normalize("NFD", word),
            unicodedata.normalize(rng.choice(["NFKC", "NFKD"]), word)]


def _one(rng: random.Random, kind: int) -> list[str]:
    """One category's strings (a few categories give pairs that must differ or agree)."""
    if kind == 0:
        return [_sentence(rng)]
    if kind == 1:
        return [" ".join(rng.choice(ACCENTED) for _ in range(rng.randint(1, 4))) + " " + _combining(rng)]
    if kind == 2:
        return _nfc_nfd(rng)
    if kind == 3:
        return [_cjk(rng) + rng.choice(["", " ", " and "]) + _sentence(rng, 2)]
    if kind == 4:
        return ["".join(rng.choice(EMOJI) + rng.choice(["", "", " ", "a"]) for _ in range(rng.randint(1, 6)))]
    if kind == 5:
        return ["".join(rng.choice(WORDS) + rng.choice(SPACES) for _ in range(rng.randint(1, 6)))
                .removesuffix(" ") if rng.random() < 0.5 else rng.choice(SPACES) + _sentence(rng, 3)
                + rng.choice(SPACES)]
    if kind == 6:
        return [" ".join(rng.choice(DIGITS + [str(rng.randint(0, 10 ** rng.randint(1, 15)))])
                         for _ in range(rng.randint(1, 4)))]
    if kind == 7:
        return [" ".join(rng.choice(CONTRACTIONS + WORDS[:10]) for _ in range(rng.randint(1, 6)))]
    if kind == 8:
        pieces = [rng.choice(SPECIAL_TEXTS) if rng.random() < 0.5 else _sentence(rng, rng.randint(1, 3))
                  for _ in range(rng.randint(1, 6))]
        glue = rng.choice(["", " ", "\n"])
        text = glue.join(pieces)
        return [text if rng.random() < 0.8 else text[: rng.randint(0, len(text))]]
    if kind == 9:
        return [rng.choice(SCRIPTS) + rng.choice(["", " ", "."]) + rng.choice(SCRIPTS)[: rng.randint(0, 9)]]
    if kind == 10:
        return [_random_text(rng, rng.randint(1, 40))]
    if kind == 11:
        return [_long(rng)]
    return [rng.choice(ADDED_EDGES)]


def texts(seed: int = SEED, count: int = STRINGS) -> list[str]:
    """The seeded strings every vocabulary is checked on: fixed edge cases first, then random categories."""
    rng = random.Random(seed)
    out = ["", " ", "a", "\n", "  ", "\t\t", "A", ".", "<image>", "<|im_end|>", "<|im_start|>user\nDescribe this "
           "image.<image><|im_end|>\n<|im_start|>assistant\n", "<image><image><image>", "<ima", "<|im_end|",
           "<fake_token_around_image><global-img><image><fake_token_around_image>", "<|startoftext|>a photo of a cat"
           "<|endoftext|>", "hello\u00a0world", "tab\tsep\tvalues", "line\r\nbreak", "ΣΑΣ", "İ", "ß", "ﬁ",
           *ADDED_EDGES, *CONTRACTIONS, *EMOJI, *DIGITS]
    while len(out) < count:
        out.extend(_one(rng, rng.randrange(13)))
    return out[:count]


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (as tokenizers' ByteLevel has it)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def _id_sequences(tok: Tokenizer, rng: random.Random) -> list[list[int]]:
    """Random ids (specials, unknown ids past the vocabulary) and single-byte tokens that break UTF-8 apart."""
    size = tok.get_vocab_size()
    specials = sorted(tok.get_added_tokens_decoder())
    byte_ids = [i for i in (tok.token_to_id(c) for c in _byte_chars().values()) if i is not None]
    out: list[list[int]] = []
    for n in range(RANDOM_SEQUENCES):
        kind = n % 4
        length = rng.randint(1, 40)
        if kind == 0:
            out.append([rng.randrange(size + 5) for _ in range(length)])
        elif kind == 1:
            out.append([rng.choice(specials) if rng.random() < 0.3 else rng.randrange(size) for _ in range(length)])
        elif kind == 2 and byte_ids:
            emoji = "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4))).encode()
            chars = _byte_chars()
            ids = [tok.token_to_id(chars[b]) for b in emoji]
            ids = [i for i in ids if i is not None]
            cut = rng.randint(0, len(ids))
            out.append(ids[:cut] + [rng.choice(byte_ids) for _ in range(rng.randint(0, 3))] + ids[cut:])
        elif byte_ids:
            # runs of lone continuation bytes: more than the stream's max_held, so it must emit them as they stand
            cont = [i for i in (tok.token_to_id(_byte_chars()[b]) for b in range(0x80, 0xC0)) if i is not None]
            run = [rng.choice(cont) for _ in range(rng.randint(1, 20))] if cont else []
            out.append(run + [rng.randrange(size) for _ in range(rng.randint(0, 5))])
    return out


def _decode_cases(text_tok: TextTokenizer, tok: Tokenizer, sequences: list[list[int]]) -> list[dict[str, Any]]:
    cases = []
    for ids in sequences:
        stream = text_tok.stream()
        pieces = [stream.push(i) for i in ids]
        text = text_tok.decode(ids)
        cases.append({"ids": ids, "text": text, "raw": tok.decode(ids, skip_special_tokens=False),
                      "pieces": pieces, "rest": stream.finish(text)})
    return cases


def _encode_cases(path: Path, config: TextConfig, strings: list[str], rng: random.Random) -> dict[str, Any]:
    text_tok = TextTokenizer(path, config)
    batches = []
    at = 0
    while at < len(strings):
        size = rng.randint(1, 8)
        batch = [s for s in strings[at: at + size]] or [""]
        at += size
        encoded = text_tok.encode(batch)
        batches.append({"texts": batch, "input_ids": encoded["input_ids"].tolist(),
                        "attention_mask": encoded["attention_mask"].tolist()})
    return {"spec": config.to_json(), "batches": batches}


def _vocabulary(out: Path, name: str, hf_tok: Any, plain_length: int, specs: list[TextConfig],
                strings: list[str]) -> dict[str, Any]:
    """Writes ``<name>.tokenizer.json`` and ``<name>.cases.json``; returns the index entry."""
    path = out / f"{name}.tokenizer.json"
    special = write_tokenizer(hf_tok, path)
    tok = Tokenizer.from_file(str(path))
    pad = int(special["pad_token_id"] or 0)
    rng = random.Random(f"{SEED}-{name}")
    plain_tok = TextTokenizer(path, TextConfig(file=path.name, max_length=plain_length, padding="longest",
                                               pad_token_id=pad))
    plain = [plain_tok.encode_plain(s) for s in strings]
    probes = [*SPECIAL_TEXTS, "Ġthe", "the", "</w>", "a</w>", "<unk>", "no such token \u2603", "<|IM_END|>", "ĠĠ"]
    cases = {
        "name": name,
        "tokenizer": path.name,
        "vocab_size": tok.get_vocab_size(),
        "token_ids": {p: tok.token_to_id(p) for p in probes},
        "plain": {"max_length": plain_length, "texts": strings, "ids": plain},
        "encode": [_encode_cases(path, spec, strings, rng) for spec in specs],
        "decode": _decode_cases(plain_tok, tok, plain + _id_sequences(tok, rng)),
    }
    (out / f"{name}.cases.json").write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    return {"name": name, "tokenizer": path.name, "cases": f"{name}.cases.json", "strings": len(strings),
            "batches": sum(len(e["batches"]) for e in cases["encode"]), "decodes": len(cases["decode"])}


def smollm2_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's tokenizer from the installed GGUF, with the captioner's image tokens (as
    ``demo.shapes.captioner.load_smollm2`` builds it, without loading the model)."""
    from transformers import AutoTokenizer

    from pocketvlm.demo.shapes.captioner import GGUF_FILE, IMAGE_TOKENS, smollm2_dir
    from pocketvlm.export.hf_quiet import quiet_transformers

    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(smollm2_dir()), gguf_file=GGUF_FILE)
    tok.add_special_tokens({"additional_special_tokens": list(IMAGE_TOKENS)})
    return tok


def qwen2_tokenizer(smollm2: Any) -> Any:
    """transformers' Qwen2 tokenizer pipeline over SmolLM2's vocabulary and merges, with Qwen's special tokens and
    added tokens that exercise lstrip/rstrip, single_word and normalized matching."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    model = json.loads(smollm2.backend_tokenizer.to_str())["model"]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    tok.add_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, special=True, normalized=False),
                    AddedToken("Bonjour", single_word=True, normalized=True, special=False),
                    AddedToken("Cafe\u0301", normalized=True, special=False)])
    # normalized tokens whose content the normalizer changes (matched and decoded in NFC form)
    tok.backend_tokenizer.add_tokens([AddedToken("Cafe\u0301 noir", normalized=True, special=False),
                                      AddedToken("ﬁx", normalized=True, special=True)])
    return tok


def feature_tokenizers(corpus: list[str]) -> list[Any]:
    """Two small BPEs over the stages the real vocabularies do not use (see the module docstring)."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, continuing_subword_prefix="##",
                               end_of_word_suffix="</w>"))
    tok.normalizer = norm.Sequence([norm.NFKC(), norm.Replace("\u2019", "'"), norm.Strip(), norm.Prepend("^")])
    tok.pre_tokenizer = pre.Sequence([
        pre.Split(Regex(r"\s+"), "removed"), pre.Digits(individual_digits=True), pre.Split("-", "merged_with_previous"),
        pre.Split(Regex("[,.]"), "merged_with_next"), pre.Split(Regex("[!?]+"), "contiguous"),
        pre.Split(Regex(r"\p{L}+"), "isolated", invert=True)])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "[CLS]", "[SEP]"], limit_alphabet=80,
                                  continuing_subword_prefix="##", end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = post.Sequence([post.BertProcessing(("[SEP]", 2), ("[CLS]", 1)),
                                        post.ByteLevel(trim_offsets=False)])
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    data["model"].update(byte_fallback=True, ignore_merges=True, fuse_unk=False)
    data["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Lowercase"}, {"type": "NFKD"}]}
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\w+|[^\w\s]+"}, "behavior": "Isolated", "invert": False},
        {"type": "Digits", "individual_digits": False}]}
    names = {"unk_token": "<unk>", "pad_token": "[SEP]", "bos_token": "[CLS]", "eos_token": "[SEP]"}
    return [PreTrainedTokenizerFast(tokenizer_object=t, **names) for t in (tok, Tokenizer.from_str(json.dumps(data)))]


def write(out: Path) -> None:
    out = Path(out) / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    strings = texts()
    tiny = strings[:TINY_STRINGS]
    smollm2 = smollm2_tokenizer()
    clip_77 = TextConfig(file="tokenizer.json", max_length=77, padding="longest", pad_token_id=49407)
    clip_16 = TextConfig(file="tokenizer.json", max_length=16, padding="max_length", pad_token_id=49407)
    entries = [
        _vocabulary(out, "smollm2", smollm2, 8192, [], strings),
        _vocabulary(out, "clip", clip_bpe_tokenizer(), 77, [clip_77, clip_16], strings),
        _vocabulary(out, "qwen2", qwen2_tokenizer(smollm2), 32768, [], strings),
        _vocabulary(out, "tiny-clip", train_tokenizer("clip"), 77,
                    [TextConfig(file="tokenizer.json", max_length=77, padding="longest", pad_token_id=1)], tiny),
        _vocabulary(out, "tiny-siglip", train_tokenizer("siglip"), 64,
                    [TextConfig(file="tokenizer.json", max_length=16, padding="max_length", pad_token_id=0)], tiny),
        _vocabulary(out, "tiny-qwen2_vl", train_tokenizer("qwen2_vl"), 1024, [], tiny),
        _vocabulary(out, "tiny-idefics3", train_tokenizer("idefics3"), 1024, [], tiny),
    ]
    specs = [TextConfig(file="tokenizer.json", max_length=24, padding="max_length", pad_token_id=0),
             TextConfig(file="tokenizer.json", max_length=48, padding="longest", pad_token_id=2)]
    for name, tok in zip(["features-a", "features-b"], feature_tokenizers(tiny), strict=True):
        entries.append(_vocabulary(out, name, tok, 64, specs, tiny))
    (out / "index.json").write_text(json.dumps({"vocabularies": entries}, indent=1), encoding="utf-8")
