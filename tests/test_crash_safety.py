"""Crash safety of exports: SIGKILL at seeded random moments of real exports and at every step of ``publish`` (the
atomic exchange and the rename fallback), a full disk, and two exports racing for one ``--out``.

Everything that forks runs in a helper process (this file run as a script: ``python test_crash_safety.py MODE
ARGS.json``) that imports pocketvlm and torch once and forks a fresh grandchild per export, so the pytest process
never forks. ``POCKETVLM_CRASH_MOMENTS`` sets the number of random moments (default 3; 20 is the issue's figure); the
per-moment outcomes are printed (``-s``) and written to ``crash_summary.json`` in the test's tmp directory. Each
moment costs a killed export and a complete one, so that test takes about 1 + 1.5 x (moments + moments // 5) tiny
CLIP exports: about 25 s each on this idle 2-core machine, 19-35 s loaded (17 min for 20 moments, 3 min for 3).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest

# 3 in the suite (each costs two tiny exports: ~25 s apiece here even when idle); the 20 with
# POCKETVLM_CRASH_MOMENTS=20 (the figures in the note come from that run)
MOMENTS = int(os.environ.get("POCKETVLM_CRASH_MOMENTS", "3"))
FIRST_MOMENTS = max(1, MOMENTS // 5)  # kills of a first export (nothing to replace): 1 in the suite, 4 at 20
SEED = 22
TMPFS_SIZE = "1m"  # the tiny CLIP bundle is about 1.4 MB
FAKE_PID = 4242  # the pid in the names of hand-made staging / old directories


# --- the helper process's side ---------------------------------------------------------------------------------------

def _fork(job: Callable[[], object]) -> int:
    """A grandchild that runs ``job`` and exits 0, or 1 after printing the traceback (3 for a typed error)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        result = job()
        code = int(result) if isinstance(result, int) else 0
    except BaseException:  # noqa: BLE001 - report anything, then leave without running the parent's cleanup
        traceback.print_exc()
    finally:
        os._exit(code)


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _kill_at(pid: int, deadline: float) -> str:
    """SIGKILL ``pid`` at ``deadline`` (monotonic) unless it exits first; 'killed' or 'finished'."""
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "finished" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else f"failed {status}"
        time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
    os.kill(pid, signal.SIGKILL)
    code = _wait(pid)
    return "killed" if code == -signal.SIGKILL else "finished" if code == 0 else f"failed {code}"


def state(out: Path, old: bytes | None) -> str:
    """'absent', 'unloadable', 'old' (loads, every sha256 checked, manifest bytes as before) or 'new'."""
    from pocketvlm.runtime import errors, load_bundle

    if not out.exists():
        return "absent"
    try:
        load_bundle(out)
    except errors.BundleError:
        return "unloadable"
    return "old" if (out / "manifest.json").read_bytes() == old else "new"


def _loads(path: Path) -> bool:
    return path.is_dir() and state(path, None) != "unloadable"


def survey(out: Path) -> tuple[list[str], list[str]]:
    """The other entries beside ``out``, and those of them that load as a bundle."""
    others = sorted(p.name for p in out.parent.iterdir() if p.name != out.name)
    return others, [name for name in others if _loads(out.parent / name)]


def _export(checkpoint: Path, out: Path, quant: str = "fp32") -> Callable[[], object]:
    from pocketvlm.export.loop import export_bundle
    from pocketvlm.export.quant.config import QuantConfig

    return lambda: export_bundle(checkpoint, out, quant=QuantConfig.parse(quant))


def trial(checkpoint: Path, out: Path, fraction: float, duration: float) -> dict[str, Any]:
    """One export SIGKILLed ``fraction`` of ``duration`` (the last unkilled export's seconds) after its fork, the
    state it leaves, then a normal export (whose duration the next trial's moment scales)."""
    old = (out / "manifest.json").read_bytes() if out.exists() else None
    started = time.monotonic()
    ended = _kill_at(_fork(_export(checkpoint, out)), started + fraction * duration)
    record: dict[str, Any] = {"fraction": round(fraction, 3), "moment_s": round(fraction * duration, 2),
                              "export": ended, "out": state(out, old)}
    record["others"], record["loadable_others"] = survey(out)
    started = time.monotonic()
    record["next_export"] = _wait(_fork(_export(checkpoint, out)))
    record["next_s"] = round(time.monotonic() - started, 2)
    record["after"], _ = survey(out)
    record["after_out"] = state(out, old)
    return record


def harness(work: Path, checkpoint: Path, moments: int, first: int, seed: int) -> dict[str, Any]:
    """Moments uniform (seeded) over an unkilled export: fractions of the export just before each, so that a load
    change on the machine does not push them past the end."""
    out = work / "out"
    started = time.monotonic()
    assert _wait(_fork(_export(checkpoint, out))) == 0, "the unkilled export failed"
    duration = round(time.monotonic() - started, 2)
    rng = random.Random(seed)
    records = []
    for index in range(moments + first):
        if index >= moments:
            shutil.rmtree(out)  # a first export: nothing to replace
        records.append(trial(checkpoint, out, rng.random(), records[-1]["next_s"] if records else duration))
    return {"seed": seed, "export_s": duration, "replacing": records[:moments], "first": records[moments:]}


def _step_hooks(kill_at: int) -> None:
    """In a grandchild: SIGKILL itself just before its ``kill_at``-th file-system step (fsync, rename, unlink,
    rmdir, rmtree, renameat2)."""
    from pocketvlm.export import bundle_writer

    count = [0]

    def hooked(real: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            count[0] += 1
            return real(*args, **kwargs)
        return step

    for name in ("fsync", "rename", "unlink", "rmdir"):
        setattr(os, name, hooked(getattr(os, name)))
    shutil.rmtree = hooked(shutil.rmtree)  # type: ignore[assignment]
    if bundle_writer.RENAMEAT2 is not None:
        bundle_writer.RENAMEAT2 = hooked(bundle_writer.RENAMEAT2)


def _stage(parent: Path, old: Path, new: Path) -> tuple[Path, Path]:
    """``parent/out`` = a copy of ``old``; the staging directory an export leaves for publish, from ``new``."""
    from pocketvlm.export.bundle_writer import PENDING_MANIFEST

    out, staging = parent / "out", parent / f".out.partial-{FAKE_PID}"
    shutil.copytree(old, out)
    shutil.copytree(new, staging)
    (staging / "manifest.json").rename(staging / PENDING_MANIFEST)
    return out, staging


def _killed_in(job: Callable[[], object], fallback: bool, step: int) -> str:
    def run() -> object:
        from pocketvlm.export import bundle_writer

        if fallback:
            bundle_writer.RENAMEAT2 = None
        _step_hooks(step)
        return job()

    code = _wait(_fork(run))
    return "killed" if code == -signal.SIGKILL else "finished" if code == 0 else f"failed {code}"


def _cleanups(out: Path, old: bytes, fallback: bool) -> list[str]:
    """The next export's clean-up (``remove_stale_staging``) killed at each of its steps in turn, then unkilled:
    the state after each attempt."""
    from pocketvlm.export.bundle_writer import remove_stale_staging

    seen, step = [], 0
    while True:
        ended = _killed_in(partial(remove_stale_staging, out), fallback, step)
        seen.append(state(out, old))
        if ended != "killed":
            return [*seen, ended]
        step += 1


def publish_steps(work: Path, old: Path, new: Path, fallback: bool) -> list[dict[str, Any]]:
    """``publish`` killed before each of its steps in turn (until it finishes); after each kill, the state, then the
    next export's clean-up killed at each of its steps, then run to the end."""
    from pocketvlm.export.bundle_writer import publish

    records, step = [], 0
    before = (old / "manifest.json").read_bytes()
    while True:
        out, staging = _stage(work / f"{'fallback' if fallback else 'exchange'}-{step}", old, new)
        ended = _killed_in(partial(publish, staging, out), fallback, step)
        record = {"step": step, "publish": ended, "out": state(out, before)}
        record["others"], record["loadable_others"] = survey(out)
        record["cleanups"] = _cleanups(out, before, fallback)
        record["after"], _ = survey(out)
        records.append(record)
        if ended != "killed":
            return records
        step += 1


def race(work: Path, logs: Path, checkpoint: Path, quants: list[str]) -> list[dict[str, Any]]:
    """Two CLI exports to one --out, released together through a pipe: exit code and stderr of each."""
    from pocketvlm.cli.main import main

    out, (read, write) = work / "out", os.pipe()

    def racer(quant: str) -> Callable[[], object]:
        def run() -> int:
            os.close(write)
            log = os.open(logs / f"stderr-{quant}", os.O_WRONLY | os.O_CREAT)
            os.dup2(log, 2)
            os.read(read, 1)
            return main(["export", "--model", str(checkpoint), "--out", str(out), "--quant", quant])
        return run

    pids = [_fork(racer(quant)) for quant in quants]
    os.close(read)
    os.write(write, b"go")
    codes = [_wait(pid) for pid in pids]
    return [{"quant": q, "code": c, "stderr": (logs / f"stderr-{q}").read_text()} for q, c in zip(quants, codes)]


def _helper_main(mode: str, args_file: str) -> None:
    import torch  # noqa: F401 - imported once, before any fork

    import pocketvlm.cli.main  # noqa: F401
    import pocketvlm.export.loop  # noqa: F401

    args = json.loads(Path(args_file).read_text())
    paths = {key: Path(value) if isinstance(value, str) else value for key, value in args.items()}
    job = {"kill": harness, "steps": publish_steps, "race": race}[mode]
    result = job(**{key: value for key, value in paths.items() if key != "result"})
    Path(args["result"]).write_text(json.dumps(result, indent=1))


# --- the tests -------------------------------------------------------------------------------------------------------

def helper(tmp_path: Path, mode: str, timeout: float, **args: Any) -> Any:
    """Run this file as the helper process in ``mode``; its JSON result."""
    result = tmp_path / f"{mode}-result.json"
    spec = tmp_path / f"{mode}-args.json"
    spec.write_text(json.dumps({**{k: str(v) if isinstance(v, Path) else v for k, v in args.items()},
                                "result": str(result)}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, mode, str(spec)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(result.read_text())


def _summary(result: dict[str, Any], records: list[dict[str, Any]], label: str) -> str:
    counts: dict[str, int] = {}
    for record in records:
        key = f"{record['export']}/{record['out']}"
        counts[key] = counts.get(key, 0) + 1
    hidden = sum(bool(r["loadable_others"]) for r in records)
    moments = ", ".join(f"{r['moment_s']:.1f}" for r in records)
    spans = [r["next_s"] for r in records]
    return (f"{label}: {len(records)} moments (seed {result['seed']}, uniform over the unkilled export before each: "
            f"{result['export_s']} s first, then {min(spans):.1f}-{max(spans):.1f} s) at [{moments}] s: {counts}; "
            f"a hidden leftover loaded as a bundle after {hidden}; the next export succeeded "
            f"{sum(r['next_export'] == 0 for r in records)}/{len(records)}")


def test_sigkill_at_random_moments_of_real_exports(tmp_path: Path, workspace: Any) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = helper(tmp_path, "kill", 3600, work=work, checkpoint=workspace.checkpoint("clip"), moments=MOMENTS,
                    first=FIRST_MOMENTS, seed=SEED)
    (tmp_path / "crash_summary.json").write_text(json.dumps(result, indent=1))
    for records, allowed in ((result["replacing"], ("old", "new")), (result["first"], ("absent", "new"))):
        assert all(record["out"] in allowed for record in records), records
    for record in result["replacing"] + result["first"]:
        assert record["export"] in ("killed", "finished"), record  # killed at its moment, or done before it
        assert all(name.startswith(".out.") for name in record["others"]), record  # hidden, the next export's
        assert record["next_export"] == 0 and record["after"] == [] and record["after_out"] == "new", record
    print("\n" + _summary(result, result["replacing"], "SIGKILL of a replacing export"))
    print(_summary(result, result["first"], "SIGKILL of a first export") + f" ({tmp_path / 'crash_summary.json'})")


def _new_copy(bundle: Path, folder: Path) -> Path:
    """A second valid bundle: ``bundle`` with another manifest (its created_utc), every file the same."""
    shutil.copytree(bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["created_utc"] = "2000-01-01T00:00:00Z"
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "rename-fallback"])
def test_sigkill_at_every_step_of_publish(tmp_path: Path, workspace: Any, fallback: bool) -> None:
    from pocketvlm.export import bundle_writer

    if not fallback and bundle_writer.RENAMEAT2 is None:
        pytest.skip("this libc has no renameat2 (macOS, old glibc): publish always uses the rename fallback")
    old = workspace.bundle("clip", "fp32")
    new = _new_copy(old, tmp_path / "new")
    work = tmp_path / "work"
    work.mkdir()
    records = helper(tmp_path, "steps", 600, work=work, old=old, new=new, fallback=fallback)
    assert records[-1]["publish"] == "finished" and records[-1]["out"] == "new", records[-1]
    for record in records:
        allowed = ("old", "new", "absent") if fallback else ("old", "new")
        assert record["out"] in allowed, record
        assert all(s in ("old", "new", "absent") for s in record["cleanups"][:-1]), record
        assert record["cleanups"][-2] == ("old" if record["out"] == "absent" else record["out"]), record
        assert record["after"] == [], record
    if fallback:  # the window the fallback cannot close, and what the next export does about it
        assert any(r["out"] == "absent" for r in records)
    print(f"\npublish ({'rename fallback' if fallback else 'renameat2 exchange'}) killed before each of its "
          f"{len(records) - 1} steps: out {[r['out'] for r in records]}")


def test_orphaned_old_bundle_is_restored_then_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       workspace: Any) -> None:
    """The fallback's kill window by hand: the old bundle renamed away, the complete new one not yet in place. The
    next export (fallback publish too) restores the old bundle first, then replaces it; nothing else is left."""
    from pocketvlm.export import bundle_writer
    from pocketvlm.export.loop import export_bundle

    monkeypatch.setattr(bundle_writer, "RENAMEAT2", None)
    old_bundle = workspace.bundle("clip", "fp32")
    out = tmp_path / "out"
    shutil.copytree(old_bundle, tmp_path / f".out.old-{FAKE_PID}")
    _new_copy(old_bundle, tmp_path / f".out.partial-{FAKE_PID}")
    before = (old_bundle / "manifest.json").read_bytes()
    bundle_writer.remove_stale_staging(out)
    assert state(out, before) == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (out / "manifest.json").rename(out / bundle_writer.PENDING_MANIFEST)  # an unfinished publish of old versions
    shutil.copytree(old_bundle, tmp_path / f".out.old-{FAKE_PID}")
    export_bundle(workspace.checkpoint("clip"), out)
    assert state(out, before) == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs here (needs root / CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_disk_full_is_one_typed_line_and_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        workspace: Any) -> None:
    from pocketvlm.cli.main import main

    checkpoint = workspace.checkpoint("clip")
    with small_tmpfs(tmp_path / "small", TMPFS_SIZE) as small:
        capsys.readouterr()
        code = main(["export", "--model", str(checkpoint), "--out", str(small / "out")])
        err = capsys.readouterr().err
        left = sorted(p.name for p in small.iterdir())
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: no space left on device"), err
    assert str(small) in lines[0] and "MB free on" in lines[0] and "(fix: free space on" in lines[0], err
    assert left == [], left
    print(f"\n{TMPFS_SIZE} tmpfs: {lines[0]}")


def test_what_counts_as_a_full_disk(tmp_path: Path) -> None:
    """ENOSPC / EDQUOT anywhere in the chain (wrapped by an exporter, or only as text) is a full disk; an interrupt
    or an error unrelated to writing on a roomy filesystem is not."""
    import errno

    from pocketvlm.export.bundle_writer import disk_full_error, full_filesystems
    from pocketvlm.runtime.errors import ExportError

    out = tmp_path / "out"
    for code in (errno.ENOSPC, errno.EDQUOT):
        try:
            try:
                raise OSError(code, os.strerror(code))
            except OSError as exc:
                raise ExportError("ONNX export of text_encoder failed", "report it") from exc
        except ExportError as wrapped:
            full = full_filesystems(wrapped, [out])
        assert full is not None and len(full) >= 1
        message = disk_full_error([out], full).one_line()
        assert message.startswith(f"no space left on device while exporting {out}") and "MB free on" in message
    assert full_filesystems(RuntimeError("write failed: No space left on device (os error 28)"), [out])
    assert full_filesystems(KeyboardInterrupt(), [out]) is None
    assert full_filesystems(ValueError("bad shape"), [out]) is None
    assert full_filesystems(OSError("problem writing element 3 to file"), [out]) is None  # plenty of room here


def test_each_output_of_a_multi_bundle_export_is_locked(tmp_path: Path, workspace: Any) -> None:
    from pocketvlm.export.bundle_writer import export_lock
    from pocketvlm.export.loop import export_bundles
    from pocketvlm.export.quant.config import QuantConfig
    from pocketvlm.runtime.errors import ExportError

    plan = [(tmp_path / "fp32", QuantConfig.parse("fp32")), (tmp_path / "int8", QuantConfig.parse("int8"))]
    with export_lock(tmp_path / "int8"), pytest.raises(ExportError, match="another export is writing .*int8"):
        export_bundles(workspace.checkpoint("clip"), plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the first output's lock was let go, nothing written


def test_a_held_lock_refuses_a_second_export(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             workspace: Any) -> None:
    from pocketvlm.cli.main import main
    from pocketvlm.export.bundle_writer import export_lock

    out = tmp_path / "out"
    argv = ["export", "--model", str(workspace.checkpoint("clip")), "--out", str(out)]
    capsys.readouterr()
    with export_lock(out):
        code = main(argv)
        err = capsys.readouterr().err
        left = sorted(p.name for p in tmp_path.iterdir())
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: another export is writing {out} (pid {os.getpid()}, started "), err
    assert "(fix: " in lines[0] and left == [".out.lock"], (err, left)  # nothing written but the lock it found
    assert main(argv) == 0
    assert state(out, None) == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    print(f"\nheld lock: {lines[0]}")


def test_two_exports_racing_for_one_out(tmp_path: Path, workspace: Any) -> None:
    work = tmp_path / "work"
    work.mkdir()
    racers = helper(tmp_path, "race", 900, work=work, logs=tmp_path, checkpoint=workspace.checkpoint("clip"),
                    quants=["fp32", "int8"])
    winners = [r for r in racers if r["code"] == 0]
    losers = [r for r in racers if r["code"] != 0]
    assert len(winners) == 1 and len(losers) == 1, racers
    lines = losers[0]["stderr"].strip().splitlines()
    assert losers[0]["code"] == 2 and len(lines) == 1, losers
    assert lines[0].startswith(f"error: another export is writing {work / 'out'} (pid "), losers
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    assert state(work / "out", None) == "new" and sorted(p.name for p in work.iterdir()) == ["out"]
    assert manifest["quantization"]["default"]["method"] == winners[0]["quant"], manifest["quantization"]
    print(f"\nrace: {winners[0]['quant']} won; {losers[0]['quant']}: {lines[0]}")


if __name__ == "__main__":
    _helper_main(sys.argv[1], sys.argv[2])
