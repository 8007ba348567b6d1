"""The MediaPipe Tasks variant of a CLIP / SigLIP image tower (``pocketvlm export --target tflite --mediapipe``):
``image_encoder.mediapipe.tflite`` beside the bundle's own ``image_encoder.tflite``, which MediaPipe's
``ImageEmbedder`` runs with no code beyond a region of interest.

What MediaPipe's ``ImageEmbedder`` (PyPI ``mediapipe`` 1.2.2) asks of a model, and how the variant meets it:

- one NHWC input ``[1, H, W, 3]``: the graph takes ``image`` in that layout and transposes it itself;
- a float input needs TFLite metadata with ``NormalizationOptions``, applied as one mean / std to every channel:
  the metadata says mean 0, std 255 (MediaPipe then feeds RGB in [0, 1]) and the checkpoint's per-channel rescale,
  mean and std are constants inside the graph (``tflite_metadata`` writes the metadata);
- MediaPipe resizes the image, or a region of interest, to the input size with a bilinear stretch and no
  antialiasing, which aliases badly on a large downscale (the shapes CLIP's 64 px tower at 1x on the 16 test
  photos: cosine 0.72 at worst, 0.965 on average, against pocketvlm's own path). So the variant's input is about
  ``scale`` times the tower's size and the graph does the rest of the downscale as PIL's antialiased resize
  (``resample``);
- pocketvlm's resize + centre crop keeps one window of the image (all of it without a crop); the app passes a
  region of interest computed from that window (``roi_rect``), which also places MediaPipe's samples where the
  graph's resize expects them (MediaPipe's grid starts on the region's first pixel centre, half a step off
  pixel-centre resizing).

Text towers get no variant: MediaPipe Tasks' ``TextEmbedder`` tokenizes for BERT-style (WordPiece / SentencePiece),
regex or string-input models and has no byte-level BPE tokenizer (CLIP's). VLMs are not embedders at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.spec import ComponentDef, TensorDef
from pocketvlm.export.targets.tflite.convert import convert_component
from pocketvlm.export.targets.tflite.quantize import quant_record, quantize_tflite
from pocketvlm.export.targets.tflite.resample import FILTERS, pil_resize_module
from pocketvlm.export.targets.tflite.tflite_metadata import image_model_metadata, with_metadata
from pocketvlm.runtime.errors import ExportError
from pocketvlm.runtime.image import ImagePreprocess
from pocketvlm.runtime.manifest import sha256_file

COMPONENT = "image_encoder"
FILE = "image_encoder.mediapipe.tflite"
INPUT = "image"
# MediaPipe maps 0..255 to [(0 - mean) / std, (255 - mean) / std] for a float input: [0, 1]
METADATA_MEAN, METADATA_STD = 0.0, 255.0
MAX_INPUT = 1024  # px: the default scale keeps the input (a float tensor MediaPipe fills per image) below this
MAX_SCALE = 8  # and at most this many times the tower's size
REFUSED = {  # why a component gets no MediaPipe variant, for the one-line refusal
    "text_encoder": "MediaPipe Tasks have no byte-level BPE tokenizer (CLIP's); their TextEmbedder tokenizes only "
                    "for BERT-style (WordPiece / SentencePiece), regex or string-input models",
    "image_frontend": "the MediaPipe variant is the whole image tower, not a --split-vision stage",
    "image_transformer": "the MediaPipe variant is the whole image tower, not a --split-vision stage",
}
NOT_AN_EMBEDDER = ("MediaPipe's ImageEmbedder runs image-embedding models only, and a VLM's text side would need a "
                   "byte-level BPE tokenizer, which MediaPipe Tasks do not have")


def check_request(components: tuple[str, ...], scale: int | None, component: str, gptq: bool) -> None:
    """Refuse, before anything is written, a MediaPipe variant of anything but a CLIP / SigLIP image tower.
    ``components``: the variants asked for (``ExportOptions.mediapipe``); ``component``: one the export writes,
    quantized with GPTQ where ``gptq``."""
    for name in components:
        if name != COMPONENT:
            why = REFUSED.get(name, f"'{name}' is not an image tower")
            raise ExportError(f"no MediaPipe variant of {name}: {why}",
                              f"ask for --mediapipe {COMPONENT} (the CLIP / SigLIP image tower) only")
    if scale is not None and not 1 <= scale <= MAX_SCALE:
        raise ExportError(f"--mediapipe-scale {scale} is outside 1..{MAX_SCALE}",
                          "use 1 (MediaPipe resizes the whole way) up to 8; the default is 8x, below 1024 px")
    if component == "text_encoder":
        return  # exported as usual beside the image tower's variant
    if component == COMPONENT and gptq:
        raise ExportError("GPTQ for image_encoder with --mediapipe: the MediaPipe variant takes another input than "
                          "the feeds recorded for image_encoder", "quantize image_encoder without gptq")
    if component in REFUSED:
        raise ExportError(f"--mediapipe with --split-vision: {REFUSED[component]}", "drop --split-vision")
    if component != COMPONENT:
        raise ExportError(f"--mediapipe: this model's {component} is not a CLIP / SigLIP image tower: "
                          f"{NOT_AN_EMBEDDER}", "drop --mediapipe, or export a CLIP or SigLIP checkpoint")


def default_scale(size: int) -> int:
    """Up to 8x the tower's input, below ``MAX_INPUT`` px (1x for towers of more than half of it). On the shapes
    CLIP (64 px) and the 16 test photos, min cosine 0.956 at 2x, 0.9968 at 4x and 0.9994 at 8x
    (``benchmarks/results/mediapipe_embedder.json``)."""
    return max(1, min(MAX_SCALE, MAX_INPUT // size))


def input_side(size: int, scale: int) -> int:
    """The variant's input side for a tower side ``size``: the grid of ``resample.taps`` (its own size at 1x)."""
    return size if scale == 1 else scale * size - 1


def tower_size(preprocess: ImagePreprocess, config: Any) -> tuple[int, int]:
    """(H, W) of the tower's own input, which the checkpoint's preprocessing must produce."""
    size = int(config.vision_config.image_size)
    if preprocess.output_size != (size, size):
        raise ExportError(f"the image processor makes {preprocess.output_size} images but the image tower takes "
                          f"{size}x{size}", "fix crop_size / size in the checkpoint's preprocessor_config.json")
    crop = preprocess.center_crop
    if crop and "shortest_edge" in preprocess.resize and max(crop.values()) > preprocess.resize["shortest_edge"]:
        raise ExportError(f"the centre crop {crop} is larger than the resize {preprocess.resize}: pocketvlm pads "
                          "the image black there, MediaPipe's region of interest cannot", "export without --mediapipe")
    return size, size


def crop_window(preprocess: ImagePreprocess, width: int, height: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in pixels of a ``width`` x ``height`` image: what pocketvlm's resize + centre crop keeps."""
    if not preprocess.center_crop:
        return 0.0, 0.0, float(width), float(height)
    resized_h, resized_w = preprocess.resized_size(height, width)
    crop_h, crop_w = preprocess.output_size
    top, left = (resized_h - crop_h) // 2, (resized_w - crop_w) // 2
    return (left * width / resized_w, top * height / resized_h, (left + crop_w) * width / resized_w,
            (top + crop_h) * height / resized_h)


def roi_rect(preprocess: ImagePreprocess, scale: int, width: int, height: int) -> dict[str, float] | None:
    """The region of interest to give MediaPipe for a ``width`` x ``height`` image, by the names its ``RectF``
    takes (it declares them left, top, bottom, right: pass them by name); None: the whole image.

    At ``scale`` 1 it is the crop window. Above, MediaPipe's S = N - 1 samples (N = scale * tower size) along an
    axis whose window is [a, b] px fall at ``left + j * (right - left) / S``; with left = a + (b - a) / N - 0.5 and
    right = b - 0.5 that is pixel-centre position (j + 1) / N of the window, the grid the graph resizes from."""
    x0, y0, x1, y1 = crop_window(preprocess, width, height)
    if scale == 1:
        whole = (x0, y0, x1, y1) == (0.0, 0.0, float(width), float(height))
        return None if whole else {"left": x0 / width, "top": y0 / height, "right": x1 / width,
                                   "bottom": y1 / height}
    across, down = (scale * side for side in preprocess.output_size[::-1])
    return {"left": max(x0 + (x1 - x0) / across - 0.5, 0.0) / width, "right": (x1 - 0.5) / width,
            "top": max(y0 + (y1 - y0) / down - 0.5, 0.0) / height, "bottom": (y1 - 0.5) / height}


ROI_RULE = ("window [x0, x1] x [y0, y1] px: what preprocessing.image keeps of a W x H image (no center_crop: all of "
            "it; else (rh, rw) = its resize of the image (shortest_edge S: the short side becomes S, the long side "
            "int(S * long / short)), (ch, cw) = center_crop, left = (rw - cw) // 2, top = (rh - ch) // 2, x0 = left * "
            "W / rw, x1 = (left + cw) * W / rw, y0 = top * H / rh, y1 = (top + ch) * H / rh). scale 1: the region "
            "is the window / (W, H). scale above 1, per axis with N = scale * the tower's side: from x0 + (x1 - x0) "
            "/ N - 0.5 (at least 0) to x1 - 0.5, over W (likewise y over H)")


def variant_component(component: ComponentDef, preprocess: ImagePreprocess, size: tuple[int, int],
                      scale: int) -> ComponentDef:
    """``component`` (the image tower) behind an NHWC [0, 1] input of ``input_side`` samples: PIL's resize (the
    checkpoint's filter, antialiased) down to the tower's size, then its normalisation: pixel p in 0..255 reaches
    the tower as (p * rescale_factor - mean) / std, and MediaPipe feeds p / 255."""
    import torch

    gain = np.array([255.0 * preprocess.rescale_factor / s for s in preprocess.std], dtype=np.float32)
    shift = np.array([m / s for m, s in zip(preprocess.mean, preprocess.std, strict=True)], dtype=np.float32)
    shape = (1, input_side(size[0], scale), input_side(size[1], scale), 3)

    class MediaPipeInput(torch.nn.Module):
        def __init__(self, tower: torch.nn.Module) -> None:
            super().__init__()
            self.tower = tower
            self.resize = pil_resize_module(preprocess.resample, scale, *size) if scale > 1 else None
            self.register_buffer("gain", torch.from_numpy(gain).view(1, 3, 1, 1))
            self.register_buffer("shift", torch.from_numpy(shift).view(1, 3, 1, 1))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            planes = image.permute(0, 3, 1, 2)
            if self.resize is not None:
                planes = self.resize(planes)
            return self.tower(planes * self.gain - self.shift)

    def signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
        return (TensorDef(INPUT, "float32", shape),), component.signature(config)[1]

    return ComponentDef(component.name, lambda model: MediaPipeInput(component.wrap(model)), signature,
                        lambda config: {INPUT: torch.full(shape, 0.5)})


def variant_scale(requested: int | None, preprocess: ImagePreprocess, config: Any) -> int:
    size = tower_size(preprocess, config)
    scale = default_scale(size[0]) if requested is None else requested
    if scale > 1 and preprocess.resample not in FILTERS:
        raise ExportError(f"the MediaPipe variant cannot resize in the graph with '{preprocess.resample}' (PIL does "
                          "not antialias it)", "export with --mediapipe-scale 1 (MediaPipe resizes the whole way)")
    return scale


def convert_variant(model: Any, component: ComponentDef, preprocess: ImagePreprocess, scale: int,
                    path: Path) -> None:
    """fp32 ``.tflite`` of the variant, without metadata (written after quantization, which would drop it)."""

    variant = variant_component(component, preprocess, tower_size(preprocess, model.config), scale)
    convert_component(model, variant, path, {component.name: variant.example_inputs(model.config)})


def write_variant(raw: Path, dest: Path, spec: QuantSpec, preprocess: ImagePreprocess, scale: int, family: str,
                  output: TensorDef) -> dict[str, Any]:
    """Quantize the variant as the bundle's image tower, add MediaPipe's metadata, and return its manifest record."""
    plain = dest.with_name(dest.name + ".plain")
    quantize_tflite(raw, plain, spec, f"{COMPONENT} (MediaPipe variant)")
    metadata = image_model_metadata(
        f"pocketvlm {family} {COMPONENT}",
        f"{family} image tower for MediaPipe ImageEmbedder: RGB in [0, 1] (NHWC) in, the unnormalised {output.name} "
        "of the bundle's image_encoder out (cosine similarity, or l2_normalize, compares them)",
        (INPUT, "RGB image in [0, 1], NHWC; the checkpoint's resize filter and per-channel mean / std are in the "
                "graph"),
        METADATA_MEAN, METADATA_STD, (output.name, "projected image embedding"))
    with_metadata(plain, dest, metadata)
    plain.unlink()
    return variant_record(dest, spec, preprocess, scale, output)


def variant_record(path: Path, spec: QuantSpec, preprocess: ImagePreprocess, scale: int,
                   output: TensorDef) -> dict[str, Any]:
    height, width = preprocess.output_size
    side = (input_side(height, scale), input_side(width, scale))
    return {
        "task": "ImageEmbedder", "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
        "input": {"name": INPUT, "dtype": "float32", "shape": [1, *side, 3],
                  "layout": "NHWC", "color_space": "RGB", "range": [0.0, 1.0]},
        "output": {"name": output.name, "dtype": "float32", "shape": [1, int(output.shape[-1])],
                   "normalized": False},
        "metadata_normalization": {"mean": [METADATA_MEAN], "std": [METADATA_STD]},
        "in_graph": {"scale": scale, "resize": {"from": list(side), "to": [height, width],
                                                "resample": preprocess.resample if scale > 1 else None,
                                                "antialias": scale > 1},
                     "rescale_factor": preprocess.rescale_factor, "mean": list(preprocess.mean),
                     "std": list(preprocess.std)},
        "region_of_interest": {"window": "crop" if preprocess.center_crop else "whole_image", "rule": ROI_RULE},
        "resize": "MediaPipe stretches the region of interest to the input size, bilinear without antialiasing, "
                  "rounded to 8 bits" + (f"; the graph resizes that to the tower's size as PIL's {preprocess.resample} "
                                         "with antialiasing" if scale > 1 else "") +
                  ". pocketvlm: PIL's antialiased resize of the whole image (8-bit), then the centre crop",
        "quantization": quant_record(spec),
    }
