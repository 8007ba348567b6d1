"""Pieces shared by the VLM families: image-processor lookup, chat template and the manifest blocks the runtime's
``VisionLanguageModel`` reads."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from pocketvlm.export.families import decoder
from pocketvlm.export.families.decoder import kv_shape
from pocketvlm.export.families.vision_split import patch_embed_split
from pocketvlm.export.spec import ComponentDef, FamilySpec, Tolerances, VisionSplit
from pocketvlm.export.tokenizer import load_hf_tokenizer, write_tokenizer
from pocketvlm.runtime.errors import TokenizerError
from pocketvlm.runtime.text import TextConfig

CHAT_TEMPLATE = "chat_template.jinja"


def chat_template(model_dir: Path, tokenizer: Any) -> str:
    """The checkpoint's chat template: chat_template.jinja, the processor's chat_template.json, or the tokenizer's."""
    if (model_dir / CHAT_TEMPLATE).is_file():
        return (model_dir / CHAT_TEMPLATE).read_text(encoding="utf-8")
    if (model_dir / "chat_template.json").is_file():
        return json.loads((model_dir / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return template
    raise TokenizerError(f"{model_dir} has no chat template", f"add {CHAT_TEMPLATE} to the checkpoint directory")


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    found = []
    for source in (getattr(model, "generation_config", None), model.config, getattr(model.config, "text_config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        found += value if isinstance(value, list) else [value]
    found.append(tokenizer.eos_token_id)
    return sorted({int(v) for v in found if v is not None})


def vlm_metadata(model: Any, model_dir: Path, bundle_dir: Path, image: dict[str, Any], special: dict[str, int],
                 position_ids: str, image_token: str) -> dict[str, Any]:
    tokenizer = load_hf_tokenizer(model_dir)
    ids = write_tokenizer(tokenizer, bundle_dir / "tokenizer.json")
    (bundle_dir / CHAT_TEMPLATE).write_text(chat_template(model_dir, tokenizer), encoding="utf-8")
    text_config = getattr(model.config, "text_config", model.config)
    layers, kv_heads, head_dim = kv_shape(text_config)
    tied = bool(getattr(model.config, "tie_word_embeddings", False) or getattr(text_config, "tie_word_embeddings",
                                                                               False))
    max_context = int(getattr(text_config, "max_position_embeddings", 32768))
    text = TextConfig(file="tokenizer.json", max_length=max_context, padding="longest",
                      pad_token_id=int(ids["pad_token_id"] or 0))
    return {
        "task": "image_text_to_text",
        "preprocessing": {"image": image},
        "tokenizer": text.to_json(),
        "chat_template": CHAT_TEMPLATE,
        "special_tokens": {**ids, **special, "image_token": image_token},
        "generation": {"eos_token_ids": eos_ids(model, tokenizer), "max_context": max_context},
        "decoder": {
            "position_ids": position_ids,
            "mrope_section": list((getattr(text_config, "rope_parameters", None) or {}).get("mrope_section") or []),
            "num_layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
            "hidden_size": int(text_config.hidden_size), "vocab_size": int(text_config.vocab_size),
            "logits": "last position only",
            "kv_cache": "runtime-owned fixed buffer per layer; inputs past_* = whole buffer, outputs present_* = new "
                        "entries only; attention_mask marks filled slots then the new tokens",
        },
        "embeddings": {
            "tied": tied,
            "storage": "text_decoder",
            "how": "the text_decoder takes input_ids, gathers from its own embedding table and merges image_embeds at "
                   "image-token positions; with tied embeddings the same initializer feeds the Gather and the LM "
                   "head MatMul (a block-quantized table is shared by GatherBlockQuantized and MatMulNBits), so the "
                   "table is stored once and there is no separate token_embedding component",
        },
    }


def text_decoder_component(wrap: Callable[[Any], Any], mrope: bool) -> ComponentDef:
    """The shared ``text_decoder`` component over ``config.text_config``."""
    return ComponentDef("text_decoder", wrap, lambda c: decoder.decoder_signature(c.text_config, mrope=mrope),
                        lambda c: decoder.decoder_example(c.text_config, c.image_token_id, mrope=mrope),
                        lambda c: decoder.decoder_bounds(c.text_config))


# Parity thresholds of the VLM families, per method and where a target measures differently per target/method; the
# tests read them from here. Vision features by cosine (fp16 also by max abs over the output's scale); the decoder by
# the worst step's next-token logits cosine, teacher-forced on the reference's greedy tokens; greedy tokens exactly at
# fp32, elsewhere a first divergence only on a near-tie (the reference's top-2 margin within 2x the bundle's logit
# error at that step). Core ML's 4-bit decoders (fp16 activations, a 2-layer random decoder) measured logits cosine
# ~0.9 (int4) and 0.86 (palette4), int8 0.998; ONNX and LiteRT int4 >= 0.99 on the usual 0.02 init.
TOLERANCES = Tolerances(
    min_cosine={"fp32": 0.99999, "fp16": 0.9999, "int8": 0.99, "int4": 0.98},
    max_abs={},
    max_abs_relative={"fp16": 1e-2},
    # qnn/fp16: the emulated HTP's fp16 measured 0.9969 at the worst step (tiny idefics3, 0.2 init), below Core ML's
    # fp16; its greedy tokens still equal PyTorch's or diverge on a near-tie
    # executorch/fp32: XNNPACK's fp32 kernels, held to the fp32 line (greedy tokens equal, as ONNX and LiteRT)
    logits_min_cosine={"fp32": 0.99999, "executorch/fp32": 0.99999, "fp16": 0.999, "int8": 0.99, "int4": 0.97,
                       "coreml/int8": 0.995, "coreml/int4": 0.85, "qnn/fp16": 0.995},
    min_top1_agreement={"fp32": 1.0, "fp16": 0.875, "int8": 0.8, "int4": 0.5},
    near_tie_factor={"fp16": 2.0, "int8": 2.0, "int4": 2.0},
    min_divergence_step={"fp16": 4},
)


def vlm_spec(module: ModuleType, name: str, vision: ComponentDef, text: ComponentDef,
             split_vision: bool | VisionSplit, tolerances: Tolerances = TOLERANCES) -> FamilySpec:
    """A VLM family module's spec, from its fixed interface: ``load_model``, ``from_config``, ``tiny_config``,
    ``bundle_metadata``, ``default_processor`` and ``hf_reference_inputs``. ``split_vision``: the family's own
    split point, True for the Qwen families' (``vision_split.patch_embed_split``), False for none."""
    point = patch_embed_split(vision) if split_vision is True else split_vision or None
    return FamilySpec(
        name=name, model_types=(name,), task="image_text_to_text", components=(vision, text),
        load_model=module.load_model, tiny_config=module.tiny_config, from_config=module.from_config,
        bundle_metadata=module.bundle_metadata, default_processor=module.default_processor,
        vision_split=point, reference_inputs=module.hf_reference_inputs, tolerances=tolerances,
    )
