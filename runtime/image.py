"""Image loading and preprocessing, equal to the Hugging Face (PIL backend) image processors.

The steps and their numerics follow transformers' PIL path exactly: the EXIF orientation applied (as its
``load_image`` does, and the web demo's ``createImageBitmap``), RGB conversion that composites transparency onto
white, PIL resize, integer center crop, rescale in float64 then float32, normalise in float32. Constants come from
the bundle manifest (``preprocessing.image``), so apps in other languages can do the same.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pocketvlm.runtime.errors import ImageError, ImageTooLargeError

ORIENTATION = 0x0112  # the EXIF tag
DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000; beyond this an image is almost surely a mistake or a bomb

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
RESAMPLE_NAMES = {int(v): k for k, v in RESAMPLE.items()}

ImageInput = str | Path | bytes | Image.Image | np.ndarray


def load_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image, with typed errors for every way that can fail."""
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, "image")
        return upright(source)
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or source.dtype != np.uint8:
            raise ImageError(f"array image must be uint8 HxW or HxWxC, got {source.dtype} {source.shape}",
                             "pass a uint8 array or a PIL image")
        _check_pixels((source.shape[1], source.shape[0]), max_pixels, "array image")
        return Image.fromarray(source)
    if isinstance(source, bytes):
        name, handle = "image bytes", io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ImageError(f"image file not found: {path}", "check the path")
        if not path.is_file():
            raise ImageError(f"image path is not a file: {path}", "pass an image file, not a directory")
        name, handle = str(path), io.BytesIO(path.read_bytes())
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)
            _check_pixels(image.size, max_pixels, name)
            image.load()
            image = upright(image)
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name} is too large to decode safely ({exc})",
                                 "downscale the image before passing it") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not an image file PIL can read", "pass a JPEG, PNG, WebP, BMP or TIFF") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} is corrupt or truncated ({exc})", "re-download or re-save the image") from exc
    return image


def upright(image: Image.Image) -> Image.Image:
    """The image as its EXIF orientation says it is seen, as transformers' ``load_image``, browsers'
    ``createImageBitmap`` and phone galleries show it (a phone photo is stored sideways with orientation 6 or 8).
    EXIF that PIL cannot parse leaves the image as stored: the pixels are still the photo."""
    try:
        if image.getexif().get(ORIENTATION, 1) in (1, None):
            return image  # the common case, without the copy exif_transpose would make
        return ImageOps.exif_transpose(image) or image
    except Exception:  # PIL's EXIF parser raises many types (struct.error, KeyError, ...) on malformed tags
        return image


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{name} is empty ({width}x{height})", "pass an image with at least one pixel")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}",
            "downscale the image, or raise the limit with --max-pixels",
        )


def rescale_normalize(array: np.ndarray, factor: float, mean: Any, std: Any) -> np.ndarray:
    """HWC uint8 -> HWC float32 as transformers does it: rescale in float64, cast, then normalise in float32."""
    scaled = (array.astype(np.float64) * factor).astype(np.float32)
    return (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)


def to_eight_bit(image: Image.Image) -> Image.Image:
    """Greyscale beyond 8 bits (16-bit PNG and TIFF: ``I;16*``; ``I`` or ``F`` holding 16-bit values) scaled to
    0..255 as browsers and phone decoders show it. PIL's own ``convert`` clips at 255 instead, which turns a 16-bit
    photo white (transformers inherits that); 8-bit-range ``I`` / ``F`` images keep PIL's clipping."""
    array = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode in ("I", "F") and array.size and float(array.max()) > 255):
        scaled = np.clip(array.astype(np.float64), 0, 65535) / 257.0
        return Image.fromarray(np.rint(scaled).astype(np.uint8))
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB conversion as transformers does it: transparency is composited onto white. Deep greyscale is scaled to
    8 bits first (``to_eight_bit``); premultiplied ``La`` goes through ``LA`` (PIL has no direct conversion)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = to_eight_bit(image)
    if image.mode == "La":
        image = image.convert("LA")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class ImagePreprocess:
    """Constants of one image processor, as recorded in the manifest's ``preprocessing.image``."""

    resize: dict[str, int]  # {"shortest_edge": N} or {"height": H, "width": W}
    resample: str
    center_crop: dict[str, int] | None
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImagePreprocess:
        return cls(
            resize={k: int(v) for k, v in data["resize"].items()},
            resample=data["resample"],
            center_crop=dict(data["center_crop"]) if data.get("center_crop") else None,
            rescale_factor=float(data["rescale_factor"]),
            mean=tuple(float(x) for x in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in data["std"]),  # type: ignore[arg-type]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "convert_rgb": "alpha_composite_on_white",
            "resize": dict(self.resize),
            "resample": self.resample,
            "center_crop": dict(self.center_crop) if self.center_crop else None,
            "rescale_factor": self.rescale_factor,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": "NCHW",
        }

    @property
    def output_size(self) -> tuple[int, int]:
        if self.center_crop:
            return self.center_crop["height"], self.center_crop["width"]
        return self.resize["height"], self.resize["width"]

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        if "shortest_edge" in self.resize:
            size = self.resize["shortest_edge"]
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = size, int(size * long / short)
            return (new_long, new_short) if width <= height else (new_short, new_long)
        return self.resize["height"], self.resize["width"]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image -> float32 [3, H, W]."""
        rgb = to_rgb(image)
        height, width = self.resized_size(rgb.height, rgb.width)
        array = np.asarray(rgb.resize((width, height), resample=RESAMPLE[self.resample]))
        if self.center_crop:
            array = _center_crop(array, self.center_crop["height"], self.center_crop["width"])
        normalized = rescale_normalize(array, self.rescale_factor, self.mean, self.std)
        return np.ascontiguousarray(normalized.transpose(2, 0, 1))

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        return np.stack([self(image) for image in images]).astype(np.float32)


def _center_crop(array: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """Center crop of an HWC array; pads with zeros (centred) when the image is smaller, as transformers does."""
    height, width = array.shape[:2]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0:
        return array[top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    canvas = np.zeros((new_h, new_w, array.shape[2]), dtype=array.dtype)
    pad_top, pad_left = -(-(new_h - height) // 2), -(-(new_w - width) // 2)
    canvas[pad_top : pad_top + height, pad_left : pad_left + width] = array
    top += pad_top
    left += pad_left
    top, left = max(top, 0), max(left, 0)
    return canvas[top : top + crop_h, left : left + crop_w]
