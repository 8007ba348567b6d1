"""SigLIP (``SiglipModel``): attention-pooled image tower, last-token text tower, sigmoid scoring with a bias."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch

from pocketvlm.export.families import dual_encoder as common
from pocketvlm.export.families.loading import hf_loaders
from pocketvlm.export.families.vision_split import Passthrough
from pocketvlm.export.rewrites import PatchEmbeddingAsMatMul, swapped


class ImageEncoder(torch.nn.Module):
    """pixel_values -> image_embeds (the multihead-attention pooling head's output)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.patch_embedding = PatchEmbeddingAsMatMul(model.vision_model.embeddings.patch_embedding)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with swapped(self.vision_model.embeddings, "patch_embedding", self.patch_embedding):
            return self.vision_model(pixel_values=pixel_values).pooler_output


# the split point (--split-vision): SigLIP has no class token and no pre-layernorm
CLASS_TOKEN = False
SPLIT_HOLDS = ("patch embedding + position embedding",
               "encoder layers + post-layernorm + multihead-attention pooling head")


class ImageFrontend(torch.nn.Module):
    """pixel_values -> vision_hidden [batch, patches, width]: everything before the first encoder layer."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.embeddings = model.vision_model.embeddings
        self.patch_embedding = PatchEmbeddingAsMatMul(model.vision_model.embeddings.patch_embedding)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with swapped(self.embeddings, "patch_embedding", self.patch_embedding):
            return self.embeddings(pixel_values)


class ImageTransformer(torch.nn.Module):
    """vision_hidden -> image_embeds: HF's own vision forward with the embeddings passed through."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.passthrough = Passthrough()

    def forward(self, vision_hidden: torch.Tensor) -> torch.Tensor:
        with swapped(self.vision_model, "embeddings", self.passthrough):
            return self.vision_model(pixel_values=vision_hidden).pooler_output


class TextEncoder(torch.nn.Module):
    """input_ids (padded to max_length, no mask: SigLIP was trained that way) -> text_embeds."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.text_model = model.text_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.text_model(input_ids=input_ids).last_hidden_state
        return common.project_rows(self.text_model.head, hidden[:, -1, :])


def eos_id(config: Any) -> int:
    return int(config.text_config.eos_token_id)


load_model, from_config = hf_loaders("SiglipModel")


def tiny_config(hidden: int = 64, layers: int = 2, heads: int = 4, vocab_size: int = 512, image_size: int = 32,
                patch_size: int = 8, max_positions: int = 16, eos_token_id: int = 1, pad_token_id: int = 1) -> Any:
    from transformers import SiglipConfig

    shared = dict(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers, num_attention_heads=heads)
    return SiglipConfig(
        text_config=dict(shared, vocab_size=vocab_size, max_position_embeddings=max_positions,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id),
        vision_config=dict(shared, image_size=image_size, patch_size=patch_size),
    )


def default_processor(config: Any) -> Any:
    from transformers import SiglipImageProcessor

    size = config.vision_config.image_size
    return SiglipImageProcessor(size={"height": size, "width": size})


def bundle_metadata(model: Any, model_dir: Path, bundle_dir: Path) -> dict[str, Any]:
    preprocess = common.image_preprocess(model_dir, lambda: default_processor(model.config))
    zero_shot = {"activation": "sigmoid", "logit_scale": math.exp(float(model.logit_scale.detach())),
                 "logit_bias": float(model.logit_bias.detach()), "prompt_template": "this is a photo of {}.",
                 "embed_dim": common.embed_dim(model.config)}
    max_length = int(model.config.text_config.max_position_embeddings)
    return common.dual_encoder_metadata(model_dir, bundle_dir, preprocess, max_length, "max_length", zero_shot)


SPEC = common.dual_encoder_spec(sys.modules[__name__], "siglip", text_with_mask=False)
