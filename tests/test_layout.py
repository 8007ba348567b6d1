"""The shape of the code, checked: a parity test per (family, target) found from the registries, no import cycle
(function-level imports included, so none can hide one), targets only as folders, no source file over 600 lines."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from pocketvlm.export.registry import families
from pocketvlm.export.targets.base import KNOBS
from pocketvlm.export.targets.registry import TARGETS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"export": "pocketvlm.export", "runtime": "pocketvlm.runtime", "cli": "pocketvlm.cli",
            "demo": "pocketvlm.demo"}
SOURCE_SUFFIXES = (".py", ".kt", ".swift", ".ts", ".tsx", ".js", ".mjs")


def parity_tests() -> dict[tuple[str, str], list[str]]:
    """(family, target) -> the test functions marked ``parity(target)`` parametrized over that family."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        module = importlib.import_module(f"tests.{path.stem}")
        for name in dir(module):
            function = getattr(module, name)
            marks = getattr(function, "pytestmark", []) if name.startswith("test_") else []
            targets = [m.args[0] for m in marks if m.name == "parity"]
            covered = [value for m in marks if m.name == "parametrize" and "family" in str(m.args[0])
                       for value in _family_values(m.args[0], m.args[1])]
            for target in targets:
                for family in covered:
                    found.setdefault((family, target), []).append(f"{path.name}::{name}")
    return found


def _family_values(argnames: str | tuple[str, ...], values: list) -> list[str]:
    names = [n.strip() for n in argnames.split(",")] if isinstance(argnames, str) else list(argnames)
    at = names.index("family")
    return [v if len(names) == 1 else v[at] for v in values]


def test_every_family_has_a_parity_test_on_every_target():
    found = parity_tests()
    missing = [(family, target) for family in families() for target in TARGETS if (family, target) not in found]
    assert not missing, f"(family, target) pairs without a tiny-config export-and-parity test: {missing}"
    unknown = sorted({target for _, target in found} - set(TARGETS))
    assert not unknown, f"parity tests for unregistered targets: {unknown}"


def test_meta_test_fails_without_a_parity_test(monkeypatch):
    """The check above is not a constant: a registered target that no test marks is reported."""
    monkeypatch.setitem(TARGETS, "newtarget", TARGETS["onnx"])
    with pytest.raises(AssertionError, match="newtarget"):
        test_every_family_has_a_parity_test_on_every_target()


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT)
    parts = [PACKAGES[relative.parts[0]], *relative.with_suffix("").parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every pocketvlm module -> the pocketvlm modules it imports anywhere in its file (top level or in a
    function). ``from package import name`` counts as importing ``package.name`` where that is a module."""
    modules = {module_name(path): path for top in PACKAGES for path in (ROOT / top).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                      else []))
                for alias in node.names:
                    edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_even_through_function_level_imports():
    graph = import_graph()
    assert "pocketvlm.export.loop" in graph and graph["pocketvlm.export.loop"]
    assert not cycles(graph), cycles(graph)


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_targets_are_folders_behind_the_protocol():
    flat = sorted(p.name for p in (ROOT / "export").glob("*.py")
                  if any(word in p.stem for word in (*TARGETS, "litert", "mil_", "onnx_")))
    assert not flat, f"target modules outside export/targets/<target>/: {flat}"
    for name, target in TARGETS.items():
        assert target.name == name
        assert type(target).__module__.startswith(f"pocketvlm.export.targets.{name}."), type(target).__module__
        for method in ("check", "prepare", "convert", "calibrate", "quantize", "describe"):
            assert callable(getattr(target, method)), (name, method)
        assert target.capabilities, name
        for method, knobs in target.capabilities.items():
            assert set(knobs) <= set(KNOBS), (name, method, sorted(set(knobs) - set(KNOBS)))


def test_no_source_file_over_600_lines():
    long = []
    for path in ROOT.rglob("*"):
        if path.suffix in SOURCE_SUFFIXES and path.is_file() and not {".git", "node_modules", "dist"} & set(path.parts):
            lines = path.read_text(encoding="utf-8", errors="replace").count("\n")
            if lines > 600:
                long.append((str(path.relative_to(ROOT)), lines))
    assert not long, long


def test_readme_capability_table_is_the_code():
    """The README's method x target table says what the targets' capability tables say."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    targets = [cell.strip(" `") for cell in lines[start].strip("|").split("|")[1:]]
    assert targets == list(TARGETS), targets
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = lines[start + 2 : end]
    seen = set()
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        method = cells[0].strip("`")
        seen.add(method)
        for target, cell in zip(targets, cells[1:], strict=True):
            table = TARGETS[target].capabilities
            if cell.startswith("no"):
                assert method not in table, (method, target)
                continue
            assert method in table, (method, target)
            knobs = {part.split("`")[1] for part in cell.split(",") if "`" in part}
            assert knobs == set(table[method]), (method, target, knobs, sorted(table[method]))
    assert seen == {m for t in TARGETS.values() for m in t.capabilities}, seen
