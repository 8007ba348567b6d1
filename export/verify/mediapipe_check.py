"""The MediaPipe variant of a bundle (``--mediapipe``) run by MediaPipe Tasks' own ``ImageEmbedder``, against the
bundle's LiteRT path with pocketvlm's preprocessing: per-photo cosine and zero-shot accuracy with each embedding.

MediaPipe gets what an app would give it: the decoded RGB pixels (pocketvlm's RGB conversion, so transparency and
greyscale are the same on both sides) and the region of interest of the manifest's rule; nothing else.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.targets.tflite.mediapipe import COMPONENT, roi_rect
from pocketvlm.runtime.dual_encoder import DualEncoder, l2_normalize
from pocketvlm.runtime.errors import BundleError, ExportError
from pocketvlm.runtime.image import ImagePreprocess, load_image, to_rgb
from pocketvlm.runtime.manifest import load_bundle


def _mediapipe() -> types.SimpleNamespace:
    try:
        import mediapipe
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.components.containers.rect import RectF
        from mediapipe.tasks.python.core.base_options import BaseOptions
        from mediapipe.tasks.python.vision.core.image_processing_options import ImageProcessingOptions
    except ImportError as exc:
        raise ExportError("checking the MediaPipe variant needs mediapipe, which is not installed",
                          'pip install "pocketvlm[dev]" (mediapipe==1.2.2)') from exc
    return types.SimpleNamespace(mp=mediapipe, vision=vision, RectF=RectF, BaseOptions=BaseOptions,
                                 ImageProcessingOptions=ImageProcessingOptions)


class MediaPipeEmbedder:
    """MediaPipe's ``ImageEmbedder`` on a bundle's ``image_encoder.mediapipe.tflite`` (use as a context manager:
    the task owns a native graph)."""

    def __init__(self, bundle_dir: Path | str) -> None:
        bundle = load_bundle(bundle_dir)  # sha256 of every listed file, the variant included, checked here
        self.record = bundle.manifest["components"].get(COMPONENT, {}).get("mediapipe")
        if self.record is None:
            raise BundleError(f"bundle {bundle_dir} has no MediaPipe variant", "re-export with --mediapipe")
        self.preprocess = ImagePreprocess.from_json(bundle.manifest["preprocessing"]["image"])
        self.api = _mediapipe()
        options = self.api.vision.ImageEmbedderOptions(
            base_options=self.api.BaseOptions(model_asset_path=str(bundle.file(self.record["file"]))),
            l2_normalize=False)
        self.task = self.api.vision.ImageEmbedder.create_from_options(options)

    def __enter__(self) -> MediaPipeEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.task.close()

    def features(self, image: Any) -> np.ndarray:
        """The variant's unnormalised output for one image (path, bytes, PIL image or uint8 array)."""
        rgb = to_rgb(load_image(image))
        pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
        rect = roi_rect(self.preprocess, self.record["in_graph"]["scale"], rgb.width, rgb.height)
        processing = self.api.ImageProcessingOptions(region_of_interest=self.api.RectF(**rect)) if rect else None
        result = self.task.embed(self.api.mp.Image(image_format=self.api.mp.ImageFormat.SRGB, data=pixels),
                                 processing)
        return np.asarray(result.embeddings[0].embedding, dtype=np.float32)

    def embed_image(self, images: Sequence[Any]) -> np.ndarray:
        return l2_normalize(np.stack([self.features(image) for image in images]))


def photo_cosines(bundle_dir: Path | str, photos: dict[str, Any]) -> dict[str, float]:
    """Per photo: cosine of MediaPipe's embedding of the variant with the bundle's own (LiteRT, pocketvlm's
    preprocessing)."""
    runtime = DualEncoder.load(bundle_dir)
    names = list(photos)
    reference = runtime.embed_image([photos[n] for n in names])
    with MediaPipeEmbedder(bundle_dir) as embedder:
        got = embedder.embed_image([photos[n] for n in names])
    return {name: float(row) for name, row in zip(names, np.sum(reference * got, axis=1), strict=True)}


def zero_shot(bundle_dir: Path | str, images: Sequence[Any], truth: Sequence[str], labels: Sequence[str],
              batch: int = 100) -> dict[str, Any]:
    """Zero-shot top-1 accuracy over ``labels`` with the bundle's text tower, the image side embedded by pocketvlm
    (LiteRT) and by MediaPipe, and how often their top-1 agree."""
    runtime = DualEncoder.load(bundle_dir)
    text = runtime.embed_text(runtime.prompts(labels))
    tops: dict[str, list[int]] = {"pocketvlm": [], "mediapipe": []}
    with MediaPipeEmbedder(bundle_dir) as embedder:
        for start in range(0, len(images), batch):
            chunk = list(images[start:start + batch])
            for name, embeds in (("pocketvlm", runtime.embed_image(chunk)), ("mediapipe", embedder.embed_image(chunk))):
                tops[name].extend(int(i) for i in np.argmax(runtime.logits(embeds, text), axis=1))
    index = [list(labels).index(label) for label in truth]
    right = {name: sum(t == i for t, i in zip(top, index, strict=True)) / max(len(index), 1)
             for name, top in tops.items()}
    agree = sum(a == b for a, b in zip(tops["pocketvlm"], tops["mediapipe"], strict=True)) / max(len(index), 1)
    return {"images": len(index), "labels": len(labels), "pocketvlm_accuracy": right["pocketvlm"],
            "mediapipe_accuracy": right["mediapipe"], "top1_agreement": agree}
