"""Shared fixtures: seeded checkpoints of every family, and a cache of exported bundles per (family, size, quant)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    def __init__(self, root: Path) -> None:
        self.root = root
        self._checkpoints: dict[tuple[str, str], Path] = {}
        self._bundles: dict[tuple[str, str, str], Path] = {}

    def checkpoint(self, family: str, size: str = "tiny") -> Path:
        from pocketvlm.export.synthetic import build_checkpoint

        key = (family, size)
        if key not in self._checkpoints:
            self._checkpoints[key] = build_checkpoint(family, self.root / f"ckpt-{family}-{size}", seed=0,
                                                      **SIZES[size])
        return self._checkpoints[key]

    def bundle(self, family: str, quant: str = "fp32", size: str = "tiny") -> Path:
        from pocketvlm.export.loop import export_bundle
        from pocketvlm.export.quant.config import QuantConfig

        key = (family, size, quant)
        if key not in self._bundles:
            out = self.root / f"bundle-{family}-{size}-{quant}"
            self._bundles[key] = export_bundle(self.checkpoint(family, size), out, quant=QuantConfig.parse(quant))
        return self._bundles[key]


VALIDATED: set[tuple[str, str]] = set()  # (family, target) of every manifest an export in this session wrote


@pytest.fixture(scope="session", autouse=True)
def manifests_validate_against_the_schema() -> None:
    """Every bundle any test exports, on any target, is checked against the manifest schema before it is published
    (an export whose manifest does not validate fails the test that made it)."""
    import json

    import jsonschema

    from pocketvlm.export import loop
    from pocketvlm.runtime.manifest import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    publish = loop.publish

    def validated(staging: Path, out_dir: Path) -> None:
        manifest = json.loads((staging / loop.PENDING_MANIFEST).read_text())
        jsonschema.validate(manifest, schema)
        VALIDATED.add((manifest["family"], manifest["target"]))
        publish(staging, out_dir)

    loop.publish = validated
    yield
    loop.publish = publish


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("pocketvlm"))


@pytest.fixture(scope="session")
def photos() -> dict:
    from pocketvlm.export.verify.photos import load_photos

    return load_photos()
