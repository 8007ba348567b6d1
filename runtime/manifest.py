"""The bundle contract: ``manifest.json`` beside the model files, read the same way by Python, Kotlin, Swift and JS.

The manifest is plain JSON (schema: ``runtime/schema/manifest.schema.json``). Loading a bundle checks the schema
version, the whole manifest against its schema (``schema_check``, no jsonschema dependency), and the sha256 of every
file the manifest lists, so a tampered or half-copied bundle never runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pocketvlm.runtime.errors import BundleError, BundleIntegrityError, BundleVersionError
from pocketvlm.runtime.schema_check import first_error, load_schema

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SCHEMA_PATH = Path(__file__).parent / "schema" / "manifest.schema.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    file: str
    sha256: str
    bytes: int
    format: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    quantization: dict[str, Any]

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> ComponentSpec:
        return cls(
            name=name,
            file=data["file"],
            sha256=data["sha256"],
            bytes=int(data["bytes"]),
            format=data["format"],
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
            quantization=dict(data["quantization"]),
        )


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk: its directory, the raw manifest and the typed component specs."""

    path: Path
    manifest: dict[str, Any]
    components: dict[str, ComponentSpec]

    @property
    def family(self) -> str:
        return str(self.manifest["family"])

    @cached_property
    def listed(self) -> frozenset[str]:
        return frozenset(entry["path"] for entry in self.manifest["files"])

    def file(self, relative: str) -> Path:
        """A file the manifest lists (or a listed package directory, e.g. a Core ML ``.mlpackage``), by its path
        inside the bundle. Any other name is refused: every manifest field that names a file (the tokenizer, the
        chat template, the golden record) can only reach what the sha256 check covered, never ``../`` or ``/``."""
        if not isinstance(relative, str) or not (relative in self.listed or any(
                path.startswith(relative + "/") for path in self.listed)):
            raise BundleError(f"bundle {self.path} names a file its manifest does not list: {relative!r}",
                              "re-export the bundle with `pocketvlm export`; never edit a manifest by hand")
        return self.path / relative

    def component(self, name: str) -> ComponentSpec:
        if name not in self.components:
            raise BundleError(
                f"bundle {self.path} has no component '{name}' (it has: {', '.join(sorted(self.components))})",
                "re-export the model with a pocketvlm version that writes this component",
            )
        return self.components[name]

    @property
    def total_bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.manifest["files"])


@contextmanager
def reading_fields(bundle: Bundle, what: str) -> Iterator[None]:
    """Around code that reads a model's configuration out of the manifest: a field the schema lets through but the
    model needs (a block of the other task, a key missing from an open object) is a ``BundleError`` naming it."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        detail = f"field {exc} missing" if isinstance(exc, KeyError) else f"a field is malformed ({exc})"
        raise BundleError(f"bundle {bundle.path} cannot be read as a {what}: {detail}",
                          "re-export the bundle with `pocketvlm export`; never edit a manifest by hand") from exc


def _check_paths(manifest: dict[str, Any], where: Path) -> None:
    """What the schema cannot say: every listed path stays inside the bundle (no ``..`` segment)."""
    for entry in manifest["files"]:
        if ".." in Path(entry["path"]).parts:
            raise BundleError(f"{where}: file path escapes the bundle: {entry['path']!r}",
                              "re-export the bundle with `pocketvlm export`")


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle directory not found: {bundle_dir}", "pass the --out directory of `pocketvlm export`")
    if not path.is_file():
        raise BundleError(
            f"{bundle_dir} has no {MANIFEST_NAME}: not a pocketvlm bundle, or an export that did not finish",
            "run `pocketvlm export` again into this directory",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested without end
        raise BundleError(f"{path} is not valid JSON ({exc})", "re-export the bundle with `pocketvlm export`") from exc
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int):
        raise BundleError(f"{path} has no integer schema_version", "re-export the bundle with `pocketvlm export`")
    if version > SCHEMA_VERSION:
        raise BundleVersionError(
            f"bundle schema version {version} is newer than this runtime understands ({SCHEMA_VERSION})",
            "upgrade pocketvlm (pip install -U pocketvlm) or re-export with this version",
        )
    if version < 1:
        raise BundleVersionError(f"bundle schema version {version} is invalid", "re-export the bundle")
    problem = first_error(manifest, load_schema("manifest"))
    if problem is not None:  # wrong types, values out of range, unknown formats: refused here, not deep in a load
        raise BundleError(f"{path} does not follow the manifest schema: {problem}",
                          "re-export the bundle with `pocketvlm export`; never edit a manifest by hand")
    _check_paths(manifest, path)
    return manifest


def verify_files(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    """Check that every file the manifest lists exists with the recorded size and sha256."""
    for entry in manifest["files"]:
        path = bundle_dir / entry["path"]
        if not path.is_file():
            raise BundleIntegrityError(
                f"bundle file missing: {entry['path']}", "copy the whole bundle directory again, or re-export it"
            )
        if path.stat().st_size != int(entry["bytes"]) or sha256_file(path) != entry["sha256"]:
            raise BundleIntegrityError(
                f"bundle file {entry['path']} does not match its sha256 in {MANIFEST_NAME} (modified or truncated)",
                "re-export the bundle or copy it again; never edit bundle files by hand",
            )


def load_bundle(bundle_dir: Path | str, verify: bool = True) -> Bundle:
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    if verify:
        verify_files(bundle_dir, manifest)
    return bundle_from_manifest(bundle_dir, manifest)


def bundle_from_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> Bundle:
    """The typed bundle of a manifest already read (or, for the exporter, not yet written)."""
    listed = {entry["path"] for entry in manifest["files"]}
    components = {}
    for name, data in manifest["components"].items():
        # a component is a file, or a package directory (Core ML .mlpackage) whose files are all listed
        if data["file"] not in listed and not any(path.startswith(data["file"] + "/") for path in listed):
            raise BundleError(f"component '{name}' file {data['file']} is not in the manifest's file list",
                              "re-export the bundle with `pocketvlm export`")
        components[name] = ComponentSpec.from_json(name, data)
    return Bundle(path=bundle_dir, manifest=manifest, components=components)
