"""Shared fixtures: seeded checkpoints of every family, and a cache of exported bundles per (family, size, quant)."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.serve_fixtures import port, roots  # noqa: F401 (the serve tests' fixtures)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Sizes used by the tests. "tiny" runs in seconds; "medium" is the acceptance size of the spine issue
# (hidden 256, 4 layers) with a 64 px / 16 px-patch image tower and the trained test tokenizer.
SIZES = {
    "tiny": {},
    "medium": {"hidden": 256, "layers": 4, "heads": 4, "image_size": 64, "patch_size": 16},
    # VLMs: initializer_range 0.5 makes a random decoder generate varied tokens (for greedy equality); 0.02, the
    # usual init, is the regime quantization is judged in (at 0.5 the random decoder is chaotic: see issue notes).
    "varied": {"initializer_range": 0.5},
    "standard": {"initializer_range": 0.02},
    # fp16 targets (Core ML): at 0.5 the random decoder's activations overflow fp16 (65504); 0.2 still generates
    # varied tokens and stays in range
    "fp16": {"initializer_range": 0.2},
}


class Workspace:
    """Checkpoints (per worker: cheap) and exported bundles (shared by the pytest-xdist workers: costly).

    A bundle is keyed by what it is made of: the checkpoint's content (config and weights hash, so sizes that build
    the same model, e.g. "tiny" and "varied" for the VLMs, share their exports), target, quant and options. Bundles
    live in ``shared`` (the directory every worker's temporary root sits in) under a lock per checkpoint and target:
    the first worker to ask exports, the others wait and reuse it. Tests must not edit a cached bundle in place (they
    copy it first, as the tamper tests do)."""

    def __init__(self, root: Path, shared: Path | None = None) -> None:
        self.root = root
        self.shared = shared or root
        self._checkpoints: dict[tuple[str, str], tuple[Path, str]] = {}
        self._bundles: dict[tuple, Any] = {}

    def _checkpoint(self, family: str, size: str) -> tuple[Path, str]:
        from pocketvlm.export.synthetic import build_checkpoint

        key = (family, size)
        if key not in self._checkpoints:
            path = build_checkpoint(family, self.root / f"ckpt-{family}-{size}", seed=0, **SIZES[size])
            digest = hashlib.sha256()
            for name in ("config.json", "model.safetensors"):
                digest.update(hashlib.sha256((path / name).read_bytes()).digest())
            self._checkpoints[key] = (path, digest.hexdigest()[:12])
        return self._checkpoints[key]

    def checkpoint(self, family: str, size: str = "tiny") -> Path:
        return self._checkpoint(family, size)[0]

    def bundle(self, family: str, quant: str = "fp32", size: str = "tiny", target: str = "onnx",
               **options: Any) -> Path:
        """The bundle of (family, size) at ``quant`` on ``target``, exported once per suite run. A quantized method
        brings its group (``GROUPS``) along: one load and one conversion serve every bundle of the group that the
        suite asks for, instead of one conversion per bundle. ``options`` (static ``shapes``, Core ML ``isolate``)
        go to ``export_bundles`` and are part of the key."""
        from pocketvlm.export.loop import export_bundles
        from pocketvlm.export.quant.config import QuantConfig

        checkpoint, content = self._checkpoint(family, size)
        made_of = f"{target}-{family}-{content}-" + hashlib.sha256(repr(sorted(options.items())).encode()).hexdigest()[
            :8]

        def path(q: str) -> Path:
            return self.shared / f"bundle-{made_of}-{q}"

        if quant not in self._bundles.setdefault(made_of, {}):
            with open(self.shared / f".{made_of}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be exporting this checkpoint for this target
                if not (path(quant) / "manifest.json").exists():
                    group = GROUPS.get(target, ()) if size in GROUPED_SIZES else ()
                    quants = [quant] + [q for q in group if quant in group and q != quant
                                        and not (path(q) / "manifest.json").exists()]
                    export_bundles(checkpoint, [(path(q), QuantConfig.parse(q)) for q in quants], target=target,
                                   **options)
            self._bundles[made_of][quant] = path(quant)
        return self._bundles[made_of][quant]


# Quantized methods exported together when the suite asks for one of them (the sizes the quantization tests use)
GROUPS = {"onnx": ("int8", "int4"), "tflite": ("int8", "int4"), "coreml": ("int8", "int4", "palette4")}
GROUPED_SIZES = ("tiny", "medium", "standard", "fp16")


@pytest.fixture(scope="session", autouse=True)
def manifests_validate_against_the_schema() -> None:
    """Every bundle any test exports, on any target, is checked against the manifest schema and its golden record
    against the golden schema before it is published (an export that does not validate fails the test that made
    it)."""
    import json

    import jsonschema

    from pocketvlm.export import loop
    from pocketvlm.runtime.manifest import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    golden_schema = json.loads((SCHEMA_PATH.parent / "golden.schema.json").read_text())
    publish = loop.publish

    def validated(staging: Path, out_dir: Path) -> None:
        manifest = json.loads((staging / loop.PENDING_MANIFEST).read_text())
        jsonschema.validate(manifest, schema)
        jsonschema.validate(json.loads((staging / manifest["golden"]["file"]).read_text()), golden_schema)
        publish(staging, out_dir)

    loop.publish = validated
    yield
    loop.publish = publish


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    # under xdist each worker's base temp is <run>/popen-gwN: the bundles go to <run>/bundles, shared by the workers
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "bundles"
    shared.mkdir(exist_ok=True)
    return Workspace(tmp_path_factory.mktemp("pocketvlm"), shared)


@pytest.fixture(scope="session")
def photos() -> dict:
    from pocketvlm.export.verify.photos import load_photos

    return load_photos()
