"""Turning a checkpoint's tokenizer into one portable ``tokenizer.json`` that the runtime loads with `tokenizers`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pocketvlm.runtime.errors import TokenizerError


def load_hf_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/ImportError depending on the files
        raise TokenizerError(f"cannot load the tokenizer in {model_dir}: {str(exc).splitlines()[0]}",
                             "add tokenizer.json (or vocab/merges files) to the checkpoint directory") from exc
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise TokenizerError(f"the tokenizer in {model_dir} has no fast (tokenizers) form",
                             "save a tokenizer.json with transformers' fast tokenizer, then export again")
    return tok


def write_tokenizer(tok: Any, dest: Path) -> dict[str, int | None]:
    """Write the tokenizer exactly as transformers runs it (post-processor included), minus padding/truncation,
    which the runtime applies from the manifest. Returns the special token ids."""
    backend = json.loads(tok.backend_tokenizer.to_str())
    backend["padding"] = None
    backend["truncation"] = None
    dest.write_text(json.dumps(backend, ensure_ascii=False), encoding="utf-8")
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        "unk_token_id": tok.unk_token_id,
    }
