"""One graph through the QNN HTP backend in a child process (``worker``): placement per node with the EP's reasons,
compile pass/fail with the backend's error lines, the EPContext model and binary when asked, and emulated outputs.

A crash of the backend (a signal) or a hang (``timeout``) is reported as a failed compile with the log's last error
lines; nothing the child half-wrote is kept.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.npu.log import parse
from pocketvlm.runtime.qnn import NodeShare, Soc

TIMEOUT = 3600  # seconds: a 2B-class vision tower compiles in minutes; beyond an hour the backend is stuck


@dataclass
class Probe(NodeShare):
    """One graph through the backend; ``cpu_nodes`` as {node, op, reason}."""

    soc: str = ""
    ok: bool = False
    compile_seconds: float | None = None
    error_lines: list[str] = field(default_factory=list)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    context_files: list[Path] = field(default_factory=list)
    run_error: str | None = None  # compiled, but the HTP failed to execute the feeds

    def cpu_ops(self) -> list[dict[str, Any]]:
        """CPU nodes grouped by (op, reason): [{"op", "nodes", "reason", "examples"}]."""
        groups: dict[tuple[str, str], list[str]] = {}
        for row in self.cpu_nodes:
            groups.setdefault((row["op"], row["reason"]), []).append(row["node"])
        return [{"op": op, "nodes": len(names), "reason": reason, "examples": names[:3]}
                for (op, reason), names in sorted(groups.items(), key=lambda kv: -len(kv[1]))]


def probe(model: Path, soc: Soc, overrides: dict[str, int] | None = None, context: Path | None = None,
          feeds: dict[str, np.ndarray] | None = None, timeout: int = TIMEOUT) -> Probe:
    """Run ``model`` through the HTP backend for ``soc`` in a child process. ``context``: write the EPContext model
    there (its binary beside it). ``feeds``: run them (on the compiled context when there is one)."""
    for stale in _context_files(context):  # the EP refuses to overwrite an EPContext model
        stale.unlink()
    with tempfile.TemporaryDirectory(prefix="pocketvlm-qnn-") as tmp:
        work = Path(tmp)
        request: dict[str, Any] = {"model": str(model), "soc": soc.name, "overrides": overrides or {},
                                   "log": str(work / "ep.log"), "context": str(context) if context else None}
        if feeds is not None:
            np.savez(work / "feeds.npz", **feeds)
            request.update(feeds=str(work / "feeds.npz"), outputs=str(work / "outputs.npz"))
        (work / "request.json").write_text(json.dumps(request), encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, "-m", "pocketvlm.export.npu.worker", str(work / "request.json")],
                                  capture_output=True, text=True, timeout=timeout)
            crashed = None if done.returncode == 0 else _describe_exit(done.returncode)
        except subprocess.TimeoutExpired:
            done, crashed = None, f"the HTP backend did not finish within {timeout} s"
        # the EP logs on fd 2 (the log file); the HTP backend prints its own op-level errors on fd 1
        log = parse(((work / "ep.log").read_text(encoding="utf-8", errors="replace")
                     if (work / "ep.log").exists() else "") + "\n" + (done.stdout if done is not None else ""))
        result = _last_json(done.stdout) if done is not None and crashed is None else None
        written = _context_files(context)
        if result is None or not result.get("ok"):
            for path in written:  # nothing half-written stays behind
                path.unlink(missing_ok=True)
            why = crashed or (result or {}).get("error") or "the worker wrote no result"
            return Probe(soc=soc.name, ok=False, error_lines=[why, *log.errors[-8:]])
        cpu = [{"node": name, "op": op, "reason": log.reason(name, op)} for name, op in result["cpu_nodes"]]
        outputs: dict[str, np.ndarray] = {}
        if feeds is not None and not result.get("run_error"):
            with np.load(work / "outputs.npz") as data:
                outputs = {k: data[k] for k in data.files}
        return Probe(result["htp_nodes"], result["partitions"], cpu, soc=soc.name, ok=True,
                     compile_seconds=result["compile_seconds"], outputs=outputs, context_files=written,
                     run_error=_run_error(result, log.backend_errors))


def _run_error(result: dict[str, Any], backend: list[str]) -> str | None:
    """The execution error, led by the HTP's own op-level error lines where it logged any (ORT's message after a
    failed HTP run is about its CPU retry, which cannot run an EPContext node)."""
    if not result.get("run_error"):
        return None
    return "; ".join([*dict.fromkeys(backend[:3]), result["run_error"]]) if backend else result["run_error"]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the HTP backend crashed the compiler process ({name})"
    return f"the compiler process exited with status {code}"


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except ValueError:
                return None
    return None


def _context_files(context: Path | None) -> list[Path]:
    if context is None:
        return []
    binaries = sorted(context.parent.glob(f"{context.stem}*.bin"))
    return [p for p in (context, *binaries) if p.exists()]
