"""Altering a bundle as a test needs to (weights changed, files edited) and re-hashing it, so that only the golden
self-test, not the sha256 check, can tell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from pocketvlm.runtime.manifest import sha256_file


def rehash(bundle: Path) -> None:
    """Rewrite the manifest's sha256 and sizes for the files as they are now."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["files"]:
        path = bundle / entry["path"]
        entry["sha256"], entry["bytes"] = sha256_file(path), path.stat().st_size
    for component in manifest["components"].values():
        path = bundle / component["file"]
        if path.is_file():
            component["sha256"], component["bytes"] = sha256_file(path), path.stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def altered_weights(bundle: Path, out: Path, component: str, scale: float = 0.05, seed: int = 0) -> Path:
    """A copy of ``bundle`` whose ``component`` (ONNX) has noise of ``scale`` x its std added to its largest float
    weight, re-hashed: a bundle that loads and runs but no longer computes what its golden record says."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(bundle, out)
    path = out / f"{component}.onnx"
    model = onnx.load(str(path))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    target = max(floats, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(target)
    noise = np.random.default_rng(seed).standard_normal(weights.shape).astype(np.float32) * scale * weights.std()
    target.CopyFrom(numpy_helper.from_array(weights + noise, target.name))
    onnx.save(model, str(path))
    rehash(out)
    return out
