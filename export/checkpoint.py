"""Reading a local Hugging Face checkpoint directory, with typed errors before any weight is loaded.

pocketvlm never downloads and never executes checkpoint code: a directory either holds a config.json with a
registered ``model_type`` and local weights, or the user gets a one-line reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketvlm.runtime.errors import ModelDirError, RemoteCodeError
from pocketvlm.runtime.manifest import sha256_file

WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model-*.bin", "*.gguf")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict[str, Any]
    weight_files: tuple[Path, ...]

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    @property
    def config_sha256(self) -> str:
        canonical = json.dumps(self.config, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(canonical).hexdigest()

    def weights_sha256(self) -> dict[str, str]:
        return {f.name: sha256_file(f) for f in self.weight_files}


def read_checkpoint(model_dir: Path | str) -> Checkpoint:
    path = Path(model_dir)
    if not path.exists():
        raise ModelDirError(f"model directory not found: {path}",
                            "pass a local Hugging Face checkpoint directory (pocketvlm never downloads)")
    if not path.is_dir():
        raise ModelDirError(f"model path is not a directory: {path}", "pass the checkpoint directory, not a file")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelDirError(f"{path} has no config.json: not a Hugging Face checkpoint directory",
                            "pass a directory written by save_pretrained()")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{config_path} is not valid JSON ({exc})", "re-save the checkpoint") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelDirError(f"{config_path} has no model_type", "re-save the checkpoint with a current transformers")
    if config.get("auto_map") or any(f.name.startswith("modeling_") and f.suffix == ".py" for f in path.iterdir()):
        raise RemoteCodeError(
            f"checkpoint {path.name} needs trust_remote_code (custom modelling code); "
            "pocketvlm never runs checkpoint code",
            "convert it to a transformers-native architecture first, or use a native checkpoint of the same model",
        )
    weights = sorted({f for pattern in WEIGHT_PATTERNS for f in path.glob(pattern)})
    if not weights:
        raise ModelDirError(f"{path} has a config.json but no weights (model.safetensors, pytorch_model.bin, *.gguf)",
                            "copy the weight files into the directory")
    return Checkpoint(path=path, config=config, weight_files=tuple(weights))
