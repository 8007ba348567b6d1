"""Idefics3 (``Idefics3ForConditionalGeneration``; SmolVLM uses it): SigLIP-style ViT on fixed-size tiles, pixel-shuffle
connector, Llama decoder with 1-D positions. The runtime splits images into full tiles, so every tile's patch grid is
complete and its position ids are a constant of the graph (HF derives them per image with ``bucketize``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from pocketvlm.export.families import decoder, vlm_common
from pocketvlm.export.families.loading import field, hf_loaders, image_processor, normalization
from pocketvlm.export.rewrites import PatchEmbeddingAsMatMul
from pocketvlm.export.spec import ComponentDef, TensorDef, VisionSplit
from pocketvlm.runtime.errors import ModelDirError
from pocketvlm.runtime.idefics3 import MAX_IMAGE_SIZE

ROW_COL_TOKENS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))


def full_tile_position_ids(per_side: int) -> torch.Tensor:
    """HF's position ids for a tile whose patches are all valid, computed with HF's own ops (bit-identical)."""
    boundaries = torch.arange(1 / per_side, 1.0, 1 / per_side)
    step = 1.0 / torch.tensor([per_side])
    fractional = torch.clamp(torch.arange(per_side, dtype=torch.float32)[None, :] * step[:, None], max=1.0 - 1e-6)
    bucket = torch.bucketize(fractional, boundaries, right=True)[0]
    return (bucket[:, None] * per_side + bucket[None, :]).reshape(-1)


class VisionFrontend(torch.nn.Module):
    """pixel_values [tiles, 3, tile, tile] -> vision_hidden [tiles, patches, width]: patch embedding + position
    embedding, everything before the first encoder layer."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.embeddings = model.model.vision_model.embeddings
        self.patch_embedding = PatchEmbeddingAsMatMul(self.embeddings.patch_embedding)
        self.register_buffer("position_ids", full_tile_position_ids(self.embeddings.num_patches_per_side),
                             persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        return patches + self.embeddings.position_embedding(self.position_ids)[None]


class VisionTransformer(torch.nn.Module):
    """vision_hidden [tiles, patches, width] -> image_embeds [tiles * image_seq_len, text hidden]: encoder layers,
    post-layernorm, pixel-shuffle connector. Full tiles only, so no patch mask (every patch is valid)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        vision = model.model.vision_model
        self.encoder, self.post_layernorm, self.connector = vision.encoder, vision.post_layernorm, model.model.connector

    def forward(self, vision_hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.post_layernorm(self.encoder(inputs_embeds=vision_hidden, attention_mask=None).last_hidden_state)
        embeds = self.connector(hidden)
        return embeds.reshape(-1, embeds.shape[-1])


class VisionEncoder(torch.nn.Module):
    """pixel_values [tiles, 3, tile, tile] -> image_embeds [tiles * image_seq_len, text hidden]: the two split
    stages in one graph."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.frontend, self.transformer = VisionFrontend(model), VisionTransformer(model)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.frontend(pixel_values))


def vision_signature(config: Any) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
    size = config.vision_config.image_size
    return ((TensorDef("pixel_values", "float32", ("tiles", 3, size, size)),),
            (TensorDef("image_embeds", "float32", ("image_tokens", config.text_config.hidden_size)),))


def vision_example(config: Any) -> dict[str, torch.Tensor]:
    size = config.vision_config.image_size
    return {"pixel_values": torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))}


def vision_hidden_shape(config: Any) -> tuple[int | str, ...]:
    vc = config.vision_config
    return ("tiles", (vc.image_size // vc.patch_size) ** 2, int(vc.hidden_size))


def split_sizes(config: Any, metadata: dict[str, Any]) -> dict[str, dict[str, int]]:
    """One tile, and the most tiles one image becomes: the crops of an image resized to the longest edge (a multiple
    of the tile after rounding up) plus the global image."""
    image = metadata["preprocessing"]["image"]
    longest = min(int(image["longest_edge"]), MAX_IMAGE_SIZE)
    per_side = -(-longest // int(image["tile_size"])) if image["split"] else 0
    return {"per_tile": {"tiles": 1}, "max_tiles": {"tiles": per_side**2 + 1 if per_side > 1 else 1}}


SPLIT = VisionSplit(
    component="vision_encoder", stages=("vision_frontend", "vision_transformer"),
    frontend=VisionFrontend, transformer=VisionTransformer, hidden_shape=vision_hidden_shape, sizes=split_sizes,
    holds=("patch embedding + position embedding (full-tile position ids)",
           "encoder layers + post-layernorm + pixel-shuffle connector"),
    layout="one row of vision_hidden per tile, its patches in row-major order; no patch_attention_mask crosses: the "
           "runtime feeds full tiles only (every patch valid), so the unsplit encoder takes no mask either",
)


def text_decoder(model: Any) -> torch.nn.Module:
    return decoder.CachedTextDecoder(model.model.text_model, model.lm_head, model.config.image_token_id,
                                     model.config.text_config.num_hidden_layers)


load_model, from_config = hf_loaders("Idefics3ForConditionalGeneration")


def tiny_config(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab_size: int = 512,
                vision_hidden: int = 32, vision_layers: int = 2, initializer_range: float = 0.5,
                image_token_id: int = 4, eos_token_id: int = 2, pad_token_id: int = 0) -> Any:
    from transformers import Idefics3Config

    return Idefics3Config(
        vision_config=dict(hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
                           num_hidden_layers=vision_layers, num_attention_heads=2, image_size=32, patch_size=8,
                           initializer_range=initializer_range),
        text_config=dict(model_type="llama", vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, initializer_range=initializer_range, tie_word_embeddings=True,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=None),
        scale_factor=2, image_token_id=image_token_id, tie_word_embeddings=True, initializer_range=initializer_range,
    )


def default_processor(config: Any) -> Any:
    from transformers import Idefics3ImageProcessor

    tile = config.vision_config.image_size
    return Idefics3ImageProcessor(size={"longest_edge": 4 * tile}, max_image_size={"longest_edge": tile})


def image_block(proc: Any, config: Any) -> dict[str, Any]:
    """The manifest's preprocessing block for an Idefics3 image processor and model config."""
    vc = config.vision_config
    image = {"kind": "idefics3", **normalization(proc),
             "longest_edge": int(field(proc.size, "longest_edge")),
             "tile_size": int(field(proc.max_image_size, "longest_edge")),
             "split": bool(proc.do_image_splitting),
             "image_seq_len": int((vc.image_size // vc.patch_size) ** 2 // config.scale_factor**2)}
    if image["tile_size"] != vc.image_size:
        raise ModelDirError(f"the image processor's tile size {image['tile_size']} differs from the vision tower's "
                            f"image_size {vc.image_size}",
                            "set max_image_size.longest_edge in preprocessor_config.json to the vision image_size")
    return image


def bundle_metadata(model: Any, model_dir: Path, bundle_dir: Path) -> dict[str, Any]:
    config = model.config
    image = image_block(image_processor(model_dir, lambda: default_processor(config)), config)
    special = {"image_token_id": config.image_token_id, "fake_image_token": "<fake_token_around_image>",
               "global_image_token": "<global-img>"}
    return vlm_common.vlm_metadata(model, model_dir, bundle_dir, image, special, position_ids="1d",
                                   image_token="<image>")


def hf_reference_inputs(model: Any, input_ids: torch.Tensor, processed: Any) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.from_numpy(processed.pixel_values)[None]}


SPEC = vlm_common.vlm_spec(
    sys.modules[__name__], "idefics3",
    ComponentDef("vision_encoder", VisionEncoder, vision_signature, vision_example,
                 lambda config: {"tiles": (1, 64), "image_tokens": (1, 1 << 16)}),
    vlm_common.text_decoder_component(text_decoder, mrope=False),
    split_vision=SPLIT,
)
