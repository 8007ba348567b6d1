"""The shapes CLIP: a small ``CLIPModel`` (64 px ViT, patch 8; 3-layer text tower over the real 49,408-token CLIP
BPE vocabulary) trained from scratch by ``train_clip``.

The committed file ``weights/shapes_clip.safetensors`` holds every trained tensor, with one saving: of the token
table it keeps only the rows of tokens that occur in the training captions (``...token_embedding.rows`` and
``...token_embedding.ids``). The other rows were never trained; ``write_checkpoint`` rebuilds them as zeros, so the
checkpoint directory it writes is an ordinary save_pretrained() ``CLIPModel`` with the full vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pocketvlm.demo.shapes import save_checkpoint
from pocketvlm.demo.shapes.data import LABELS
from pocketvlm.export.hf_quiet import quiet_transformers
from pocketvlm.export.synthetic import clip_bpe_tokenizer
from pocketvlm.runtime.errors import ModelDirError

WEIGHTS = Path(__file__).parent / "weights" / "shapes_clip.safetensors"
TEMPLATES = ("a {}", "a photo of a {}.", "a {} on a white background", "a picture of a {}", "a drawing of a {}.")
# zero-shot labels: the bundle's prompt template is CLIP's "a photo of {}.", so a label "a red circle" reads as the
# training caption "a photo of a red circle."
ZERO_SHOT_LABELS = tuple(f"a {label}" for label in LABELS)
IMAGE_SIZE = 64
TABLE = "text_model.embeddings.token_embedding.weight"


def clip_config(tokenizer: Any) -> Any:
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=64,
    )


def image_processor() -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                              crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def save_trained(model: Any, used_ids: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != TABLE}
    used = torch.sort(used_ids.to(torch.int64)).values
    state[TABLE.replace(".weight", ".rows")] = model.state_dict()[TABLE][used].contiguous()
    state[TABLE.replace(".weight", ".ids")] = used.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)


def build_clip(weights: Path = WEIGHTS) -> tuple[Any, Any]:
    """The trained CLIPModel (full vocabulary, untrained rows zero) and its tokenizer."""
    from safetensors.torch import load_file
    from transformers import CLIPModel

    if not weights.is_file():
        raise ModelDirError(f"trained shapes CLIP weights not found: {weights}",
                            "run python -m pocketvlm.demo.shapes.train_clip, or reinstall pocketvlm")
    tokenizer = clip_bpe_tokenizer()
    config = clip_config(tokenizer)
    state = load_file(str(weights))
    rows, ids = state.pop(TABLE.replace(".weight", ".rows")), state.pop(TABLE.replace(".weight", ".ids"))
    table = torch.zeros(config.text_config.vocab_size, rows.shape[1], dtype=rows.dtype)
    table[ids] = rows
    state[TABLE] = table
    with quiet_transformers():
        model = CLIPModel(config)
    model.load_state_dict(state, strict=True)
    return model.eval(), tokenizer


def write_checkpoint(out_dir: Path, weights: Path = WEIGHTS) -> Path:
    model, tokenizer = build_clip(weights)
    return save_checkpoint(out_dir, model, tokenizer, image_processor(),
                           {"weights": f"{weights.name}, trained by pocketvlm.demo.shapes.train_clip",
                            "zero_shot_labels": list(ZERO_SHOT_LABELS)})
