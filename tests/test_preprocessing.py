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


# --- faults the fuzz suite (tests/test_fuzz.py) found, pinned ------------------------------------------------------

def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize(("orientation", "transpose"), [(3, Image.Transpose.ROTATE_180),
                                                        (6, Image.Transpose.ROTATE_270),
                                                        (8, Image.Transpose.ROTATE_90),
                                                        (2, Image.Transpose.FLIP_LEFT_RIGHT)])
def test_exif_orientation_is_applied_as_transformers_and_browsers_do(orientation, transpose):
    """A phone photo stored sideways with EXIF orientation 6 is seen upright by transformers' load_image, by the
    web demo's createImageBitmap and by galleries; the runtime used to caption it sideways."""
    from transformers.image_utils import load_image as hf_load_image

    from pocketvlm.runtime.image import load_image

    stored = Image.fromarray(np.random.default_rng(orientation).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encoded(stored, "PNG", exif=exif.tobytes())
    ours = load_image(data)
    assert np.array_equal(np.asarray(ours.convert("RGB")), np.asarray(stored.transpose(transpose)))
    import io

    assert np.array_equal(np.asarray(ours.convert("RGB")), np.asarray(hf_load_image(Image.open(io.BytesIO(data)))))


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    """PIL's convert('RGB') clips 16-bit values at 255 (a 16-bit PNG came out white); browsers scale them."""
    from pocketvlm.runtime.image import load_image

    eight = np.random.default_rng(1).integers(0, 256, (20, 24), dtype=np.uint8)
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)
    rgb = np.asarray(to_rgb(load_image(_encoded(sixteen, "PNG"))))
    assert np.array_equal(rgb[..., 0], eight) and np.array_equal(rgb[..., 1], eight)


@pytest.mark.parametrize("mode", ["La", "LAB", "RGBa", "I", "F"])
def test_odd_modes_convert_without_error(mode):
    base = Image.fromarray(np.random.default_rng(2).integers(0, 255, (9, 11, 3), dtype=np.uint8))
    image = base.convert("LA").convert("La") if mode == "La" else base.convert("RGBA").convert("RGBa") \
        if mode == "RGBa" else base.convert(mode)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (11, 9)
