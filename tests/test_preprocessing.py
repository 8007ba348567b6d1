"""The runtime's image preprocessing and tokenization equal the Hugging Face processors exactly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pocketvlm.export.families.dual_encoder import image_preprocess
from pocketvlm.export.registry import get_family
from pocketvlm.export.synthetic import clip_bpe_tokenizer, train_tokenizer
from pocketvlm.runtime.image import to_rgb
from pocketvlm.runtime.text import TextConfig, TextTokenizer


def _processors(tmp_path):
    """(name, HF processor, runtime ImagePreprocess) for the CLIP and SigLIP processors at their real sizes."""
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    cases = [("clip", CLIPImageProcessor()), ("siglip", SiglipImageProcessor()),
             ("clip-336", CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}))]
    for name, proc in cases:
        folder = tmp_path / name
        folder.mkdir()
        proc.save_pretrained(folder)
        yield name, proc, image_preprocess(folder, default=lambda: None)


def _odd_images():
    rng = np.random.default_rng(0)
    palette = Image.fromarray(rng.integers(0, 255, (37, 53), dtype=np.uint8), mode="L").convert("P")
    palette.info["transparency"] = 3
    return {
        "tiny-7x10": Image.fromarray(rng.integers(0, 255, (7, 10, 3), dtype=np.uint8)),
        "tall-900x31": Image.fromarray(rng.integers(0, 255, (900, 31, 3), dtype=np.uint8)),
        "la": Image.fromarray(rng.integers(0, 255, (40, 60, 2), dtype=np.uint8), mode="LA"),
        "palette-transparency": palette,
        "cmyk": Image.fromarray(rng.integers(0, 255, (30, 45, 4), dtype=np.uint8), mode="CMYK"),
    }


def test_pixel_values_match_hf_on_every_photo(tmp_path, photos):
    images = {**photos, **_odd_images()}
    assert {img.mode for img in photos.values()} >= {"RGB", "L", "RGBA"}
    assert any(img.width != img.height for img in photos.values())
    for name, proc, ours in _processors(tmp_path):
        for photo, image in images.items():
            reference = proc(image, return_tensors="np")["pixel_values"][0]
            got = ours(image)
            assert got.shape == reference.shape, (name, photo)
            assert np.abs(got - reference).max() <= 1e-5, (name, photo, float(np.abs(got - reference).max()))


def test_rgb_conversion_composites_alpha_on_white():
    transparent = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(to_rgb(transparent)).min() == 255


TEXTS = ["a photo of a cat", "A Photo Of A CAT!!", "don't  stop\tme\nnow", "café naïve 東京 🚀", "", "   ",
         "x " * 200, "the number 3.14159 and 42", "<|endoftext|> inside text"]


@pytest.mark.parametrize("style", ["clip-bpe", "clip", "siglip"])
def test_token_ids_match_hf_tokenizer(tmp_path, style):
    hf = clip_bpe_tokenizer() if style == "clip-bpe" else train_tokenizer(style)
    padding = "max_length" if style == "siglip" else "longest"
    max_length = 16 if style == "siglip" else 77
    hf.save_pretrained(tmp_path)
    from pocketvlm.export.tokenizer import load_hf_tokenizer, write_tokenizer

    reloaded = load_hf_tokenizer(tmp_path)
    special = write_tokenizer(reloaded, tmp_path / "out.json")
    ours = TextTokenizer(tmp_path / "out.json", TextConfig("out.json", max_length, padding, special["pad_token_id"]))
    got = ours.encode(TEXTS)
    ref = reloaded(TEXTS, padding="max_length" if padding == "max_length" else True, max_length=max_length,
                   truncation=True, return_tensors="np")
    assert np.array_equal(got["input_ids"], ref["input_ids"])
    assert np.array_equal(got["attention_mask"], ref["attention_mask"])


def test_family_default_processor_used_when_checkpoint_has_none(tmp_path):
    spec = get_family("clip")
    config = spec.tiny_config(image_size=48)
    ours = image_preprocess(tmp_path, default=lambda: spec.default_processor(config))
    assert ours.output_size == (48, 48)
