"""Image preprocessing fixtures for the engine core's JVM tests (PreprocessTest.kt, ResampleTest.kt).

``write(out)`` puts under ``out/preprocess/``: decoded RGBA pixels (test photos and seeded random images with odd
sizes, extreme aspect ratios and transparency) as raw bytes, the Python runtime's ``pixel_values`` for each of them
under each preprocessing config (CLIP, SigLIP, a padding crop, Idefics3 unsplit and split, Qwen2-VL fixed-size and
smart_resize) as raw little-endian float32, and PIL ``Image.resize`` alone for every filter on random images (uint8),
all listed in ``index.json``. The Kotlin reads the same pixels, so only the preprocessing is compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pocketvlm.export.verify.photos import load_photos
from pocketvlm.runtime import idefics3, qwen_vl
from pocketvlm.runtime.errors import ImageError
from pocketvlm.runtime.image import RESAMPLE, ImagePreprocess

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]
RESCALE = 0.00392156862745098

# As the exporter writes them (the shapes-clip, siglip, captioner and qwen2_vl manifests), at fixture-sized sizes.
CONFIGS: dict[str, dict[str, Any]] = {
    "clip": {"convert_rgb": "alpha_composite_on_white", "resize": {"shortest_edge": 64}, "resample": "bicubic",
             "center_crop": {"height": 64, "width": 64}, "rescale_factor": RESCALE, "mean": CLIP_MEAN,
             "std": CLIP_STD, "layout": "NCHW"},
    "siglip": {"convert_rgb": "alpha_composite_on_white", "resize": {"height": 32, "width": 32},
               "resample": "bicubic", "center_crop": None, "rescale_factor": RESCALE, "mean": HALF, "std": HALF,
               "layout": "NCHW"},
    # a crop larger than the resized image on one side (zero padding) and another filter
    "clip_pad": {"convert_rgb": "alpha_composite_on_white", "resize": {"shortest_edge": 24}, "resample": "bilinear",
                 "center_crop": {"height": 40, "width": 30}, "rescale_factor": RESCALE, "mean": CLIP_MEAN,
                 "std": CLIP_STD, "layout": "NCHW"},
    "idefics3": {"kind": "idefics3", "resample": "lanczos", "rescale_factor": RESCALE, "mean": HALF, "std": HALF,
                 "longest_edge": 64, "tile_size": 64, "split": False, "image_seq_len": 16},
    "idefics3_split": {"kind": "idefics3", "resample": "lanczos", "rescale_factor": RESCALE, "mean": HALF,
                       "std": HALF, "longest_edge": 96, "tile_size": 32, "split": True, "image_seq_len": 4},
    "qwen2_vl": {"kind": "qwen2_vl", "resample": "bicubic", "rescale_factor": RESCALE, "mean": CLIP_MEAN,
                 "std": CLIP_STD, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "min_pixels": 3136,
                 "max_pixels": 28 * 28 * 6},
    "qwen2_vl_fixed": {"kind": "qwen2_vl", "resample": "bicubic", "rescale_factor": RESCALE, "mean": CLIP_MEAN,
                       "std": CLIP_STD, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
                       "min_pixels": 3136, "max_pixels": 50176, "fixed_size": [28, 56]},
}

PHOTOS = ("chelsea", "page", "logo")  # RGB, greyscale and wide, RGBA with transparency

# (width, height, alpha): "opaque", "binary" (0 or 255) or "random"
RANDOM_IMAGES = [(1, 1, "random"), (3, 200, "binary"), (200, 3, "opaque"), (17, 33, "random"), (101, 67, "opaque"),
                 (64, 64, "random"), (250, 1, "opaque"), (45, 120, "binary")]

FILTERS = tuple(RESAMPLE)


def random_rgba(rng: np.random.Generator, width: int, height: int, alpha: str) -> np.ndarray:
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    if alpha == "opaque":
        pixels[..., 3] = 255
    elif alpha == "binary":
        pixels[..., 3] = np.where(rng.random((height, width)) < 0.3, 0, 255)
    return pixels


def smooth_rgba(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Gradients plus noise: the resampler's rounding sees realistic, not only white-noise, neighbourhoods."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256,
                     np.full_like(x, 255)], axis=-1).astype(np.float64)
    noisy = base + rng.normal(0, 12, base.shape) * np.array([1, 1, 1, 0])
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def images() -> dict[str, Image.Image]:
    """Every test image as RGBA, named: the Kotlin gets exactly these bytes."""
    out = {name: photo.convert("RGBA") for name, photo in load_photos(PHOTOS).items()}
    rng = np.random.default_rng(20250611)
    for width, height, alpha in RANDOM_IMAGES:
        out[f"random_{width}x{height}_{alpha}"] = Image.fromarray(random_rgba(rng, width, height, alpha), "RGBA")
    return out


def expected(image: Image.Image, config: dict[str, Any]) -> dict[str, Any]:
    """The runtime's output for one image and config: arrays to write and what else the index records."""
    kind = config.get("kind")
    if kind is None:
        return {"pixel_values": ImagePreprocess.from_json(config)(image)[None]}
    if kind == "idefics3":
        tiled = idefics3.preprocess(image, config)
        return {"pixel_values": tiled.pixel_values, "rows": tiled.rows, "cols": tiled.cols}
    processed = qwen_vl.preprocess(image, config)
    return {"pixel_values": processed.pixel_values, "position_ids": processed.vision_position_ids,
            "grid": [1, *processed.grid], "num_tokens": processed.num_tokens}


def resize_cases(rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """(w, h, out_w, out_h): random down/up/one-axis/extreme sizes plus the pass-order and edge cases by hand."""
    fixed = [(120, 90, 114, 12), (90, 120, 12, 114), (37, 41, 37, 90), (64, 64, 64, 64), (1, 1, 5, 3),
             (90, 3, 1, 1), (80, 120, 79, 3), (31, 7, 200, 5)]
    cases = []
    for i in range(14):
        w, h = (int(rng.integers(1, 91)), int(rng.integers(1, 91))) if i < 10 else \
            (int(rng.integers(1, 121)), int(rng.integers(1, 91)))
        ow = w if i % 5 == 0 else int(rng.integers(1, 201)) if i % 5 == 1 else int(rng.integers(1, 65))
        oh = h if i % 5 == 2 else int(rng.integers(1, 4)) if i % 5 == 3 else int(rng.integers(1, 97))
        cases.append((w, h, ow, oh))
    return fixed + cases


def _raw(path: Path, array: np.ndarray, dtype: str) -> str:
    path.write_bytes(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return path.name


def write(out: Path) -> None:
    root = out / "preprocess"
    root.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"configs": CONFIGS, "images": {}, "cases": [], "resample": []}
    for name, image in images().items():
        index["images"][name] = {"width": image.width, "height": image.height,
                                 "file": _raw(root / f"{name}.rgba", np.asarray(image), "u1")}
        for config_name, config in CONFIGS.items():
            case: dict[str, Any] = {"image": name, "config": config_name}
            try:
                result = expected(image, config)
            except ImageError as exc:  # the runtime refuses: the Kotlin must too, with an InputError
                index["cases"].append({**case, "error": str(exc)})
                continue
            stem = f"{name}.{config_name}"
            pixels = result.pop("pixel_values")
            case.update(shape=list(pixels.shape), file=_raw(root / f"{stem}.f32", pixels, "<f4"), **result)
            if "position_ids" in case:
                case["position_ids"] = _raw(root / f"{stem}.ids.i64", case["position_ids"], "<i8")
            index["cases"].append(case)
    rng = np.random.default_rng(7)
    for f, filter_name in enumerate(FILTERS):
        for i, (w, h, ow, oh) in enumerate(resize_cases(rng)):
            pixels = smooth_rgba(rng, w, h) if i % 3 == 2 else random_rgba(rng, w, h, ("random", "opaque")[i % 2])
            rgba = Image.fromarray(pixels, "RGBA")
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
            resized = rgb.resize((ow, oh), resample=RESAMPLE[filter_name])
            stem = f"resize{f}_{i}"
            index["resample"].append({
                "filter": filter_name, "width": w, "height": h, "out_width": ow, "out_height": oh,
                "rgba": _raw(root / f"{stem}.rgba", pixels, "u1"),
                "rgb": _raw(root / f"{stem}.rgb", np.asarray(rgb), "u1"),
                "out": _raw(root / f"{stem}.out.rgb", np.asarray(resized), "u1")})
    (root / "index.json").write_text(json.dumps(index, indent=1))
