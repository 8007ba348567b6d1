"""CLIP (``CLIPModel``): image and text towers with their projections, as two graphs."""

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
    """pixel_values -> unnormalised image_embeds (``get_image_features``)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.patch_embedding = PatchEmbeddingAsMatMul(model.vision_model.embeddings.patch_embedding)
        self.visual_projection = model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with swapped(self.vision_model.embeddings, "patch_embedding", self.patch_embedding):
            pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return common.project_rows(self.visual_projection, pooled)


# the split point (--split-vision): the transformer starts exactly at encoder layer 0, after the pre-layernorm
CLASS_TOKEN = True
SPLIT_HOLDS = ("patch embedding + class token (row 0) + position embedding + pre-layernorm",
               "encoder layers + post-layernorm of the class token + visual projection")


class ImageFrontend(torch.nn.Module):
    """pixel_values -> vision_hidden [batch, 1 + patches, width]: everything before the first encoder layer."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.embeddings = model.vision_model.embeddings
        self.pre_layrnorm = model.vision_model.pre_layrnorm
        self.patch_embedding = PatchEmbeddingAsMatMul(model.vision_model.embeddings.patch_embedding)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with swapped(self.embeddings, "patch_embedding", self.patch_embedding):
            return self.pre_layrnorm(self.embeddings(pixel_values))


class ImageTransformer(torch.nn.Module):
    """vision_hidden -> image_embeds: HF's own vision forward with the frontend's modules passed through, then the
    projection, as ``ImageEncoder`` does."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection
        self.passthrough = Passthrough()

    def forward(self, vision_hidden: torch.Tensor) -> torch.Tensor:
        vision = self.vision_model
        with swapped(vision, "embeddings", self.passthrough), swapped(vision, "pre_layrnorm", self.passthrough):
            pooled = vision(pixel_values=vision_hidden).pooler_output
        return common.project_rows(self.visual_projection, pooled)


class TextEncoder(torch.nn.Module):
    """input_ids, attention_mask -> unnormalised text_embeds.

    Pooling is rewritten as a gather at the first end-of-text position (HF indexes with a data-dependent
    ``arange`` pair). Legacy configs (eos_token_id == 2) pool at the largest token id, as HF does.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection
        self.eos_token_id = int(model.config.text_config.eos_token_id)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.eos_token_id == 2:
            position = input_ids.argmax(dim=-1)
        else:
            position = (input_ids == self.eos_token_id).to(torch.int32).argmax(dim=-1)
        index = position.to(torch.int64)[:, None, None].expand(-1, 1, hidden.shape[-1])
        pooled = torch.gather(hidden, 1, index)[:, 0, :]
        return common.project_rows(self.text_projection, pooled)


def eos_id(config: Any) -> int:
    eos = int(config.text_config.eos_token_id)
    return config.text_config.vocab_size - 1 if eos == 2 else eos


load_model, from_config = hf_loaders("CLIPModel")


def tiny_config(hidden: int = 64, layers: int = 2, heads: int = 4, vocab_size: int = 512, image_size: int = 32,
                patch_size: int = 8, projection_dim: int = 32, max_positions: int = 77, eos_token_id: int = 1,
                bos_token_id: int = 0, pad_token_id: int = 1) -> Any:
    from transformers import CLIPConfig

    shared = dict(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers, num_attention_heads=heads)
    return CLIPConfig(
        text_config=dict(shared, vocab_size=vocab_size, max_position_embeddings=max_positions,
                         eos_token_id=eos_token_id, bos_token_id=bos_token_id, pad_token_id=pad_token_id),
        vision_config=dict(shared, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )


def default_processor(config: Any) -> Any:
    from transformers import CLIPImageProcessor

    size = config.vision_config.image_size
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def bundle_metadata(model: Any, model_dir: Path, bundle_dir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    preprocess = common.image_preprocess(model_dir, lambda: default_processor(model.config))
    positions = int(model.config.text_config.max_position_embeddings)
    tok_max = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True).model_max_length
    max_length = min(positions, int(tok_max)) if tok_max and tok_max < 1e9 else positions
    scale = math.exp(float(model.logit_scale.detach()))
    zero_shot = {"activation": "softmax", "logit_scale": scale, "logit_bias": None,
                 "prompt_template": "a photo of {}.",
                 "embed_dim": common.embed_dim(model.config)}
    return common.dual_encoder_metadata(model_dir, bundle_dir, preprocess, max_length, "longest", zero_shot)


SPEC = common.dual_encoder_spec(sys.modules[__name__], "clip", text_with_mask=True)
