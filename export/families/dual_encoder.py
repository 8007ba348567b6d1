"""Pieces shared by the contrastive dual-encoder families (CLIP, SigLIP): tower signatures, example inputs,
image-processor constants and the manifest blocks the runtime's ``DualEncoder`` reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from pocketvlm.export.families.loading import field, image_processor, resample_name
from pocketvlm.export.spec import ComponentDef, FamilySpec, TensorDef, Tolerances, VisionSplit
from pocketvlm.export.tokenizer import load_hf_tokenizer, write_tokenizer
from pocketvlm.runtime.image import ImagePreprocess
from pocketvlm.runtime.text import TextConfig


def image_signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
    size = config.vision_config.image_size
    return ((TensorDef("pixel_values", "float32", ("batch", 3, size, size)),),
            (TensorDef("image_embeds", "float32", ("batch", embed_dim(config))),))


def text_signature(with_mask: bool) -> Callable[[Any], tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]]:
    def signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
        inputs = [TensorDef("input_ids", "int64", ("batch", "sequence"))]
        if with_mask:
            inputs.append(TensorDef("attention_mask", "int64", ("batch", "sequence")))
        return tuple(inputs), (TensorDef("text_embeds", "float32", ("batch", embed_dim(config))),)

    return signature


def embed_dim(config: Any) -> int:
    return int(getattr(config, "projection_dim", None) or config.vision_config.hidden_size)


def example_pixels(config: Any) -> dict[str, torch.Tensor]:
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(2, 3, size, size, generator=generator)}


def example_text(eos_id: Callable[[Any], int], with_mask: bool, length: int = 7) -> Callable[[Any], dict]:
    def make(config: Any) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        vocab = config.text_config.vocab_size
        ids = torch.randint(0, max(vocab - 3, 1), (2, length), generator=generator)
        ids[:, -1] = eos_id(config)
        feeds = {"input_ids": ids}
        if with_mask:
            feeds["attention_mask"] = torch.ones_like(ids)
        return feeds

    return make


def sequence_bounds(config: Any) -> dict[str, tuple[int, int]]:
    return {"sequence": (2, int(config.text_config.max_position_embeddings))}


def project_rows(projection: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Apply a Linear to [batch, dim] through a 3-D MatMul, so int8/int4 quantizers (MatMul-only) reach it."""
    return projection(rows[:, None, :])[:, 0, :]


def image_preprocess(model_dir: Path, default: Callable[[], Any]) -> ImagePreprocess:
    """Constants of the checkpoint's image processor (or the family default when it ships none)."""
    proc = image_processor(model_dir, default)
    size = {k: int(v) for k in ("shortest_edge", "height", "width") if (v := field(proc.size, k)) is not None}
    if "shortest_edge" in size:
        resize = {"shortest_edge": size["shortest_edge"]}
    else:
        resize = {"height": size["height"], "width": size["width"]}
    crop = None
    if getattr(proc, "do_center_crop", False):
        crop = {"height": int(field(proc.crop_size, "height")), "width": int(field(proc.crop_size, "width"))}
    normalize = getattr(proc, "do_normalize", True)
    return ImagePreprocess(
        resize=resize,
        resample=resample_name(proc),
        center_crop=crop,
        rescale_factor=float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 1.0,
        mean=tuple(float(x) for x in proc.image_mean) if normalize else (0.0, 0.0, 0.0),
        std=tuple(float(x) for x in proc.image_std) if normalize else (1.0, 1.0, 1.0),
    )


def dual_encoder_metadata(model_dir: Path, bundle_dir: Path, preprocess: ImagePreprocess, max_length: int,
                          padding: str, zero_shot: dict[str, Any]) -> dict[str, Any]:
    tok = load_hf_tokenizer(model_dir)
    special = write_tokenizer(tok, bundle_dir / "tokenizer.json")
    text = TextConfig(file="tokenizer.json", max_length=max_length, padding=padding,
                      pad_token_id=int(special["pad_token_id"] or 0))
    return {
        "task": "zero_shot_image_classification",
        "preprocessing": {"image": preprocess.to_json()},
        "tokenizer": text.to_json(),
        "special_tokens": special,
        "zero_shot": {**zero_shot, "normalize": "l2"},
    }


# Parity thresholds, per method and where a target measures differently per target/method; the tests read them from
# here. 4-bit text towers with random weights measure 0.95-0.97 worst-prompt cosine (every layer sees every token's
# error, and the pooled token is one of many); image towers are held to 0.98. ai-edge-quantizer's int4 (min-max
# weights, int8 activations) measured 0.964 on the medium random CLIP text tower; Core ML's 4-bit packages (fp16
# activations) >= 0.95 on the tiny towers. fp16 is judged by cosine and by max abs over the output's scale; zero-shot
# top-1 agreement only where the bundle should rank exactly as PyTorch (random towers flip near-ties once quantized).
TOLERANCES = Tolerances(
    min_cosine={"fp32": 0.99999, "fp16": 0.999, "int8": 0.99, "int4": 0.98,
                "coreml/fp16": 0.9999, "coreml/int8": 0.999, "coreml/int4": 0.95, "tflite/int4": 0.95},
    component_min_cosine={"text_encoder": {"int4": 0.95}},
    max_abs={"fp32": 1e-4, "executorch/fp32": 1e-4},  # XNNPACK fp32 kernels: the acceptance line
    max_abs_relative={"fp16": 1e-2},
    min_top1_agreement={"fp32": 1.0, "fp16": 1.0},
)


def image_split(module: ModuleType) -> VisionSplit:
    """The split of ``image_encoder`` into ``image_frontend`` -> ``vision_hidden`` [batch, tokens, width] ->
    ``image_transformer``: tokens are the patches, after a class token where the family has one (``CLASS_TOKEN``)."""

    def hidden_shape(config: Any) -> tuple[int | str, ...]:
        vc = config.vision_config
        return ("batch", (vc.image_size // vc.patch_size) ** 2 + int(module.CLASS_TOKEN), int(vc.hidden_size))

    def sizes(config: Any, metadata: dict[str, Any]) -> dict[str, dict[str, int]]:
        size = config.vision_config.image_size  # the towers take one fixed input size
        return {f"{size}x{size}": {"batch": 1}}

    return VisionSplit(component="image_encoder", stages=("image_frontend", "image_transformer"),
                       frontend=module.ImageFrontend, transformer=module.ImageTransformer, hidden_shape=hidden_shape,
                       sizes=sizes, holds=module.SPLIT_HOLDS, class_token=module.CLASS_TOKEN,
                       layout=("one row per image: " + ("the class token, then " if module.CLASS_TOKEN else "")
                               + "the patches in row-major order; no mask: every patch of the fixed-size input is "
                                 "valid"))


def dual_encoder_spec(module: ModuleType, name: str, text_with_mask: bool) -> FamilySpec:
    """A dual-encoder family module's spec, from its fixed interface: ``ImageEncoder``, ``ImageFrontend`` and
    ``ImageTransformer`` (its split stages, with ``CLASS_TOKEN`` and ``SPLIT_HOLDS``), ``TextEncoder``, ``eos_id``,
    ``load_model``, ``tiny_config``, ``from_config``, ``bundle_metadata`` and ``default_processor``."""
    return FamilySpec(
        name=name,
        model_types=(name,),
        task="zero_shot_image_classification",
        components=(
            ComponentDef("image_encoder", module.ImageEncoder, image_signature, example_pixels),
            ComponentDef("text_encoder", module.TextEncoder, text_signature(text_with_mask),
                         example_text(module.eos_id, text_with_mask), sequence_bounds),
        ),
        load_model=module.load_model,
        tiny_config=module.tiny_config,
        from_config=module.from_config,
        bundle_metadata=module.bundle_metadata,
        default_processor=module.default_processor,
        tolerances=TOLERANCES,
        vision_split=image_split(module),
    )
