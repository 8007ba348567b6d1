"""The embedded default models, trained here on the easy-VQA shapes data: ``shapes_clip`` and ``captioner``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_checkpoint(out_dir: Path, model: Any, tokenizer: Any, processor: Any, source: dict[str, Any],
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write a save_pretrained() checkpoint directory (what ``pocketvlm export`` reads), with a provenance note."""
    from pocketvlm.export.hf_quiet import quiet_transformers

    out_dir.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        processor.save_pretrained(str(out_dir))
    for name, text in (extra_files or {}).items():
        (out_dir / name).write_text(text, encoding="utf-8")
    (out_dir / "pocketvlm_source.json").write_text(json.dumps(source, indent=1), encoding="utf-8")
    return out_dir
