"""The runtime (and the CLI's runtime subcommands) work with torch, transformers and the exporter unimportable."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
FORBIDDEN = ("torch", "transformers", "pocketvlm.export", "onnx", "onnxscript", "coremltools", "litert_torch",
             "skimage")
# coremltools is both the converter and the only Python binding of Core ML: the Core ML session's macOS predictor may
# import it inside a function (lazily, as litert.py imports ai-edge-litert); nothing else in the runtime may
LAZY = {"coreml.py": ("coremltools",)}

BLOCKER = """
import importlib.abc, sys
FORBIDDEN = {forbidden!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
            raise ImportError(f"blocked in this test: {{name}}")
        return None
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    script = BLOCKER.format(forbidden=FORBIDDEN) + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def test_runtime_sources_import_nothing_export_side():
    for path in RUNTIME.rglob("*.py"):
        tree = ast.parse(path.read_text())
        lazy = {id(node) for function in ast.walk(tree) if isinstance(function, ast.FunctionDef)
                for node in ast.walk(function) if isinstance(node, ast.Import)
                and all(alias.name in LAZY.get(path.name, ()) for alias in node.names)}
        for node in ast.walk(tree):
            if id(node) in lazy:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), f"{path}: imports {name}"


def test_runtime_runs_with_torch_and_transformers_blocked(workspace, tmp_path):
    bundle = workspace.bundle("clip", "int8")
    image = tmp_path / "photo.png"
    from pocketvlm.export.verify.photos import load_photos

    load_photos(("chelsea",))["chelsea"].save(image)
    result = run_blocked(f"""
import json
from pocketvlm.runtime import DualEncoder
model = DualEncoder.load({str(bundle)!r})
preds = model.classify([{str(image)!r}], ["a cat", "a dog"])
print(json.dumps({{"top": preds[0][0].label, "modules": sorted(m for m in sys.modules if m.split('.')[0] in
    ("torch", "transformers", "onnx"))}}))
""")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["top"] in ("a cat", "a dog")
    assert out["modules"] == []


def test_cli_runtime_subcommands_run_with_torch_blocked(workspace, tmp_path):
    bundle = workspace.bundle("siglip", "fp32")
    result = run_blocked(f"""
from pocketvlm.cli.main import main
sys.exit(main(["embed", "--bundle", {str(bundle)!r}, "--text", "a cat", "--out", {str(tmp_path / 'e.npy')!r}]))
""")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "e.npy").is_file()
