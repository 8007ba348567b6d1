"""Loading a family's transformers class from a checkpoint directory or a config, the same way for every family:
float32, eager attention (plain MatMul/Softmax graphs every target can take), local files only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def hf_loaders(class_name: str) -> tuple[Callable[[Path], Any], Callable[[Any], Any]]:
    """-> (load_model(checkpoint_dir), from_config(config)) for ``transformers.<class_name>``."""

    def model_class() -> Any:
        import transformers

        return getattr(transformers, class_name)

    def load_model(model_dir: Path) -> Any:
        import torch

        return model_class().from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager",
                                             local_files_only=True).eval()

    def from_config(config: Any) -> Any:
        config._attn_implementation = "eager"
        return model_class()(config).eval()

    return load_model, from_config
