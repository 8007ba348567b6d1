"""Writing bundles safely: staging directories beside the output, the manifest (with provenance: tool versions,
checkpoint hashes), and the publish step that renames a finished bundle into place with the manifest last, so an
export interrupted at any point leaves nothing that loads as a bundle and never damages the bundle it replaces.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from pocketvlm.export.checkpoint import Checkpoint
from pocketvlm.export.families.vision_split import vision_width
from pocketvlm.export.quant.config import QuantConfig
from pocketvlm.export.spec import FamilySpec
from pocketvlm.runtime.errors import ExportError
from pocketvlm.runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION, sha256_file

PENDING_MANIFEST = MANIFEST_NAME + ".partial"  # renamed to manifest.json only after the directory is in place
TOOLS = ("pocketvlm", "torch", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy", "litert-torch",
         "ai-edge-quantizer", "ai-edge-litert", "coremltools")

Progress = Callable[[str], None]


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux and macOS report ru_maxrss in KiB and bytes respectively)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def check_destination(out_dir: Path, model_dir: Path) -> None:
    out, src = out_dir.resolve(), model_dir.resolve()
    if out == src or src in out.parents:
        raise ExportError(f"output {out_dir} is inside the checkpoint directory {model_dir}",
                          "write the bundle elsewhere; pocketvlm never modifies a checkpoint directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is a file", "choose a directory path for --out")
    replaceable = (out_dir / MANIFEST_NAME).is_file() or (out_dir / PENDING_MANIFEST).is_file()
    if out_dir.is_dir() and any(out_dir.iterdir()) and not replaceable:
        raise ExportError(f"output directory {out_dir} is not empty and is not a pocketvlm bundle",
                          "choose a new or empty directory (an existing bundle there is replaced)")


def split_report(config: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """What crosses the ViT -> Transformer boundary: its tensor, and bytes per image at each dtype."""
    width = vision_width(config)
    image = metadata["preprocessing"]["image"]
    patch = image["patch_size"]
    examples = {}
    for side in (224, 448, 896):
        patches = (side // patch) ** 2
        examples[f"{side}x{side}"] = {"patches": patches,
                                      **{dtype: patches * width * size for dtype, size in
                                         (("float32", 4), ("float16", 2), ("int8", 1))}}
    return {"boundary": "vision_frontend -> vision_transformer",
            "interface": {"name": "vision_hidden", "shape": ["patches", width], "dtype": "float32",
                          "mask": None, "note": "one image per call; patches in merge-block order"},
            "bytes_per_patch": {"float32": 4 * width, "float16": 2 * width, "int8": width},
            "bytes_per_image": examples}


def publish(staging: Path, out_dir: Path) -> None:
    """Swap the finished staging directory into place (replacing an existing bundle) with renames only.

    The manifest travels as ``manifest.json.partial`` and takes its real name last, so neither the staging
    directory nor a half-published output ever loads as a bundle.
    """
    previous = None
    if out_dir.exists():
        previous = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(previous)
    staging.rename(out_dir)
    (out_dir / PENDING_MANIFEST).rename(out_dir / MANIFEST_NAME)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def remove_stale_staging(out_dir: Path) -> None:
    """Staging or replaced directories left by an export that was killed (SIGKILL, power loss)."""
    for pattern in (f".{out_dir.name}.partial-*", f".{out_dir.name}.old-*"):
        for stale in out_dir.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def ticker(say: Progress, steps: int) -> Progress:
    """Numbered progress lines with elapsed time and peak memory."""
    started, step = time.perf_counter(), 0

    def tick(message: str) -> None:
        nonlocal step
        step += 1
        elapsed = time.perf_counter() - started
        say(f"[{step}/{steps}] {message} ({elapsed:.1f}s, peak RSS so far {peak_rss_gb():.1f} GB)")

    return tick


def build_manifest(checkpoint: Checkpoint, family: FamilySpec, quant: QuantConfig, target: str, config: Any,
              extra: dict[str, Any], records: dict[str, Any], staging: Path) -> dict[str, Any]:
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    return {
        "schema_version": SCHEMA_VERSION,
        "pocketvlm_version": tool_versions().get("pocketvlm", "unknown"),
        "family": family.name,
        "model_type": checkpoint.model_type,
        "target": target,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {
            "model_dir_name": checkpoint.path.name,
            "config_sha256": checkpoint.config_sha256,
            "weights_sha256": checkpoint.weights_sha256(),
            "architectures": list(checkpoint.config.get("architectures") or []),
            "tools": tool_versions(),
        },
        "quantization": quant.to_json(),
        **extra,
        **({"vision_split": split_report(config, extra)} if "vision_frontend" in records else {}),
        "components": records,
        "files": [{"path": p.relative_to(staging).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size}
                  for p in files],
    }
