"""Loading a family's transformers class and image processor from a checkpoint directory, the same way for every
family: float32, eager attention (plain MatMul/Softmax graphs every target can take), local files only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pocketvlm.runtime.image import RESAMPLE_NAMES


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


def image_processor(model_dir: Path, default: Callable[[], Any]) -> Any:
    """The checkpoint's image processor, or the family default when it ships no preprocessor_config.json."""
    from transformers import AutoImageProcessor

    if (model_dir / "preprocessor_config.json").is_file():
        return AutoImageProcessor.from_pretrained(str(model_dir), local_files_only=True)
    return default()


def field(size: Any, key: str) -> Any:
    """transformers 5 keeps sizes as a SizeDict dataclass; older configs as plain dicts."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def resample_name(processor: Any) -> str:
    return RESAMPLE_NAMES[int(processor.resample)]


def normalization(processor: Any) -> dict[str, Any]:
    """The manifest keys every image preprocessing block shares: resampling, rescale factor, mean and std."""
    return {"resample": resample_name(processor), "rescale_factor": float(processor.rescale_factor),
            "mean": [float(x) for x in processor.image_mean], "std": [float(x) for x in processor.image_std]}
