"""The ``text_decoder`` rewrite shared by every VLM family: one graph for prefill and decode.

Inputs: ``input_ids`` [batch, sequence], ``image_embeds`` [image_tokens, hidden] (the vision encoder's output, merged
where ``input_ids == image_token_id``; pass one zero row when a step has no image tokens), ``position_ids``
([3, batch, sequence] for M-RoPE families, [batch, sequence] otherwise), ``attention_mask`` [batch, past + sequence]
and per layer ``past_key_i`` / ``past_value_i`` [batch, kv_heads, past, head_dim].
Outputs: ``logits`` [batch, vocab] for the last position only, and ``present_key_i`` / ``present_value_i`` holding just
the new [batch, kv_heads, sequence, head_dim] entries.

The runtime owns one fixed KV buffer per layer (``past`` = its capacity), writes the new entries into it and marks
filled slots in ``attention_mask``; nothing is reallocated per token. The decoder owns the token-embedding table, and
with tied embeddings the same table feeds the Gather and the LM head, so it is stored once.
"""

from __future__ import annotations

from typing import Any

import torch

from pocketvlm.export.spec import TensorDef


def image_rows(is_image: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[batch, seq, hidden]: at image-token positions the next row of ``rows`` (in order, batch-major), elsewhere
    some valid row (mask it out). HF uses boolean-mask indexing, a data-dependent shape that does not export."""
    flags = is_image.to(torch.int64)
    counts = flags.sum(-1)
    index = torch.cumsum(flags, dim=-1) - 1 + (torch.cumsum(counts, 0) - counts)[:, None]
    return rows[index.clamp(min=0, max=rows.shape[0] - 1)]


class CachedTextDecoder(torch.nn.Module):
    def __init__(self, language_model: Any, lm_head: torch.nn.Module, image_token_id: int, num_layers: int) -> None:
        super().__init__()
        self.language_model = language_model
        self.lm_head = lm_head
        self.image_token_id = image_token_id
        self.num_layers = num_layers

    def merge_image_embeds(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Embed tokens; put image rows at image-token positions in order, batch-major (no data-dependent shapes)."""
        embeds = self.language_model.embed_tokens(input_ids)
        is_image = input_ids == self.image_token_id
        return torch.where(is_image[..., None], image_rows(is_image, image_embeds).to(embeds.dtype), embeds)

    def forward(self, input_ids: torch.Tensor, image_embeds: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(input_ids, image_embeds, position_ids, attention_mask, past, {})

    def run(self, input_ids: torch.Tensor, image_embeds: torch.Tensor, position_ids: torch.Tensor,
            attention_mask: torch.Tensor, past: tuple[torch.Tensor, ...], extra: dict[str, Any]) -> tuple:
        """The shared body; ``extra`` carries family-specific language-model arguments (e.g. DeepStack)."""
        from transformers.cache_utils import DynamicCache

        embeds = self.merge_image_embeds(input_ids, image_embeds)
        cache = DynamicCache(config=self.language_model.config)
        for layer in range(self.num_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        past_length = past[0].shape[2]
        hidden = self.language_model(inputs_embeds=embeds, position_ids=position_ids, attention_mask=attention_mask,
                                     past_key_values=cache, use_cache=True, **extra).last_hidden_state
        logits = self.lm_head(hidden[:, -1:, :])[:, 0, :]
        present = []
        for layer in cache.layers[: self.num_layers]:
            present += [layer.keys[:, :, past_length:], layer.values[:, :, past_length:]]
        return (logits, *present)


def kv_shape(text_config: Any) -> tuple[int, int, int]:
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return text_config.num_hidden_layers, getattr(text_config, "num_key_value_heads", heads), head_dim


def decoder_signature(text_config: Any, mrope: bool) -> tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]:
    layers, kv_heads, head_dim = kv_shape(text_config)
    position = ("3", "batch", "sequence") if mrope else ("batch", "sequence")
    inputs = [TensorDef("input_ids", "int64", ("batch", "sequence")),
              TensorDef("image_embeds", "float32", ("image_tokens", text_config.hidden_size)),
              TensorDef("position_ids", "int64", tuple(3 if d == "3" else d for d in position)),
              TensorDef("attention_mask", "int64", ("batch", "past_sequence"))]
    outputs = [TensorDef("logits", "float32", ("batch", text_config.vocab_size))]
    for layer in range(layers):
        for kind in ("key", "value"):
            inputs.append(TensorDef(f"past_{kind}_{layer}", "float32", ("batch", kv_heads, "past", head_dim)))
            outputs.append(TensorDef(f"present_{kind}_{layer}", "float32", ("batch", kv_heads, "sequence", head_dim)))
    return tuple(inputs), tuple(outputs)


def decoder_example(text_config: Any, image_token_id: int, mrope: bool, past: int = 6,
                    length: int = 5) -> dict[str, torch.Tensor]:
    """Batch 2 (a batch of 1 would specialise the batch dim), two image tokens per row."""
    layers, kv_heads, head_dim = kv_shape(text_config)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, max(image_token_id - 1, 2), (2, length), generator=generator)
    ids[:, 1:3] = image_token_id
    positions = torch.arange(past, past + length).expand(2, -1)
    feeds = {"input_ids": ids,
             "image_embeds": torch.randn(4, text_config.hidden_size, generator=generator),
             "position_ids": positions.expand(3, 2, -1).contiguous() if mrope else positions.contiguous(),
             "attention_mask": torch.ones(2, past + length, dtype=torch.int64)}
    for layer in range(layers):
        for kind in ("key", "value"):
            feeds[f"past_{kind}_{layer}"] = torch.randn(2, kv_heads, past, head_dim, generator=generator)
    return feeds


def decoder_bounds(text_config: Any) -> dict[str, tuple[int, int] | None]:
    limit = int(getattr(text_config, "max_position_embeddings", 32768))
    return {"sequence": (1, limit), "past": (1, limit), "image_tokens": (1, 1 << 20), "past_sequence": None}
