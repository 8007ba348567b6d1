"""Writing bundles safely: staging directories beside the output, the manifest (with provenance: tool versions,
checkpoint hashes), and the publish step that renames a finished bundle into place with the manifest last, so an
export interrupted at any point leaves nothing that loads as a bundle and never damages the bundle it replaces.
"""

from __future__ import annotations

import math
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
from pocketvlm.export.families.vision_split import HIDDEN, component_def
from pocketvlm.export.quant.config import QuantConfig
from pocketvlm.export.spec import FamilySpec
from pocketvlm.runtime.errors import ExportError
from pocketvlm.runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION, sha256_file

PENDING_MANIFEST = MANIFEST_NAME + ".partial"  # renamed to manifest.json only after the directory is in place
TOOLS = ("pocketvlm", "torch", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy", "litert-torch",
         "ai-edge-quantizer", "ai-edge-litert", "coremltools")

Progress = Callable[[str], None]
DTYPE_BYTES = (("float32", 4), ("float16", 2), ("int8", 1))


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


def split_report(family: FamilySpec, config: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """What crosses the family's vision split point: the boundary, the interface tensor (class token and mask
    stated), and its bytes per image at each dtype for the family's real image sizes."""
    point = family.vision_split
    if point is None:
        raise ExportError(f"family {family.name} has no vision split point", "export without --split-vision")
    shape = list(point.hidden_shape(config))
    width = int(shape[-1])
    examples = {}
    for example, sizes in point.sizes(config, metadata).items():
        concrete = [sizes[d] if isinstance(d, str) else int(d) for d in shape]
        images = math.prod(concrete[:-2]) if len(concrete) > 2 else 1  # images (or tiles) in this example
        rows = math.prod(concrete[:-1])
        examples[example] = {"shape": concrete, "patches": rows - images * int(point.class_token),
                             "class_tokens": images * int(point.class_token),
                             **{dtype: rows * width * size for dtype, size in DTYPE_BYTES}}
    frontend, transformer = point.stages
    crossing = [t.name for t in component_def(family, transformer).signature(config)[0]]
    return {"boundary": f"{frontend} -> {transformer}", "component": point.component,
            "stages": {frontend: point.holds[0], transformer: point.holds[1]},
            "interface": {"name": HIDDEN, "shape": shape, "dtype": "float32",
                          "class_token": point.class_token, "mask": point.mask, "mask_crosses": point.mask is not None,
                          "transformer_inputs": crossing, "layout": point.layout},
            "bytes_per_patch": {dtype: size * width for dtype, size in DTYPE_BYTES},
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
        **({"vision_split": split_report(family, config, extra)}
           if family.vision_split and family.vision_split.stages[0] in records else {}),
        "components": records,
        "files": [{"path": p.relative_to(staging).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size}
                  for p in files],
    }
