"""Writing bundles safely: staging directories beside the output, the manifest (with provenance: tool versions,
checkpoint hashes), the publish step that swaps a finished bundle into place atomically, the lock that keeps two
exports off one output, and the error a full disk becomes.

An export interrupted at any point (SIGKILL and power loss included) never leaves a half-written bundle at its
output and never damages the bundle it replaces: the output is always the complete old bundle or the complete new
one (``publish``; where the atomic exchange is unavailable the output can be missing for an instant, and the next
export puts the old bundle back). What it leaves beside the output is hidden (``.<name>.*``) and removed by the next
export.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, cast

from pocketvlm.export.checkpoint import Checkpoint
from pocketvlm.export.families.vision_split import HIDDEN, component_def
from pocketvlm.export.quant.config import QuantConfig
from pocketvlm.export.spec import FamilySpec
from pocketvlm.runtime.errors import ExportError
from pocketvlm.runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION, sha256_file

PENDING_MANIFEST = MANIFEST_NAME + ".partial"  # renamed to manifest.json only after the directory is in place
TOOLS = ("pocketvlm", "torch", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy", "litert-torch",
         "ai-edge-quantizer", "ai-edge-litert", "coremltools", "executorch")

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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` and ``root`` itself, so that after a power loss a published
    bundle's files hold their data (the renames that publish it are only durable once the parent is synced too)."""
    for folder, _, names in os.walk(root):
        for name in names:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _find_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+, musl 1.2.2+
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return cast(Callable[..., int], func)


# renameat2(2) from libc, or None (macOS, old libcs): then publish uses the rename sequence (tests set it to None)
RENAMEAT2 = _find_renameat2()
AT_FDCWD, RENAME_EXCHANGE = -100, 2
EXCHANGE_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}  # old kernel, refusing filesystem


def exchange(first: Path, second: Path) -> bool:
    """Atomically swap two existing directories (``renameat2(RENAME_EXCHANGE)``). False where the libc, the kernel
    or the filesystem cannot; other failures raise ``OSError``."""
    if RENAMEAT2 is None:
        return False
    if RENAMEAT2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in EXCHANGE_UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def publish(staging: Path, out_dir: Path) -> None:
    """Put the finished staging directory in place of ``out_dir`` (replacing an existing bundle).

    The staging directory is written with ``manifest.json.partial``, so it never loads as a bundle while it is being
    filled. Here its files are fsynced, the manifest takes its real name inside the (hidden) staging directory, and
    one ``renameat2(RENAME_EXCHANGE)`` swaps it with the existing bundle (a plain rename when there is none): at every
    instant, SIGKILL included, ``out_dir`` is the complete old bundle or the complete new one. The old bundle, now at
    the staging path, is then removed (if the process dies first, the next export removes it).

    Where the exchange is unavailable (macOS, old kernels, filesystems that refuse it) the old bundle is renamed to
    ``.<name>.old-<pid>`` and the staging directory to ``out_dir``; a kill between the two renames leaves ``out_dir``
    missing, and the next export restores the old bundle before it does anything else (``remove_stale_staging``).
    """
    sync_tree(staging)
    (staging / PENDING_MANIFEST).rename(staging / MANIFEST_NAME)
    _fsync(staging)
    if out_dir.exists() and exchange(staging, out_dir):
        _fsync(out_dir.parent)
        shutil.rmtree(staging, ignore_errors=True)  # the old bundle
        return
    previous = None
    if out_dir.exists():
        previous = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(previous)
    staging.rename(out_dir)
    _fsync(out_dir.parent)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _unfinished(out_dir: Path) -> bool:
    """Missing, empty, or holding only a ``.partial`` manifest: an interrupted publish, not a user's bundle."""
    if not out_dir.is_dir():
        return not out_dir.exists()
    return not (out_dir / MANIFEST_NAME).is_file() and ((out_dir / PENDING_MANIFEST).is_file()
                                                        or not any(out_dir.iterdir()))


def remove_stale_staging(out_dir: Path) -> None:
    """Clean up after an export that was killed (SIGKILL, power loss); call it only while holding the output's lock.

    An old bundle ``.<name>.old-*`` (left only by the fallback publish's two renames) is restored to ``out_dir`` when
    ``out_dir`` is missing or unfinished, and removed otherwise. Staging and scratch directories ``.<name>.partial-*``
    are removed: ``out_dir`` never depends on them (one may be complete, or hold the old bundle after an exchange).
    """
    olds = [p for p in out_dir.parent.glob(f".{out_dir.name}.old-*") if (p / MANIFEST_NAME).is_file()]
    if olds and _unfinished(out_dir):
        if out_dir.exists():  # moved aside in one rename (removed below): a kill here leaves out_dir missing
            out_dir.rename(out_dir.with_name(f".{out_dir.name}.partial-unfinished-{os.getpid()}"))
        max(olds, key=lambda p: p.stat().st_ctime).rename(out_dir)  # the newest: renamed away last
        _fsync(out_dir.parent)
    for pattern in (f".{out_dir.name}.partial-*", f".{out_dir.name}.old-*"):
        for stale in out_dir.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def lock_path(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.lock")


def _holder(fd: int) -> str:
    """'pid N, started HH:MM:SS' from a lock file (its holder writes it right after locking: wait a moment)."""
    for _ in range(20):
        fields = os.pread(fd, 64, 0).decode("ascii", "replace").split()
        if len(fields) == 2 and fields[0].isdigit():
            started = datetime.fromtimestamp(float(fields[1])).strftime("%H:%M:%S")
            return f"pid {fields[0]}, started {started}"
        time.sleep(0.025)
    return "pid unknown"


def _lock(out_dir: Path) -> int:
    path = lock_path(out_dir)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ExportError(f"another export is writing {out_dir} ({holder})",
                              f"wait for it to finish or choose another --out (the lock {path.name} is released "
                              "when that process exits)") from None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # its holder removed the file between our open and our flock: lock the file now at the path


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


@contextmanager
def export_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``out_dir`` for a whole export: an exclusive ``fcntl.flock`` that a second export
    to the same output finds taken (``ExportError`` naming the holder, before it writes anything) and that the kernel
    releases when the holder dies (SIGKILL included; the file it leaves is reused). The holder removes the file while
    still holding the lock; one that opened it meanwhile sees, after its own flock, that the path no longer names the
    file it locked and starts over, so removal never lets two exports in at once."""
    fd = _lock(out_dir)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {time.time():.0f}\n".encode("ascii"), 0)
        except OSError as exc:  # a full disk: the export itself reports it
            if exc.errno not in DISK_FULL:
                raise
        yield
    finally:
        try:
            if _same_file(fd, lock_path(out_dir)):
                os.unlink(lock_path(out_dir))
        finally:
            os.close(fd)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL = 1 << 20  # bytes: a write failed with this little left is taken for a full disk


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from (the exporters wrap the errors of the tools they call)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def disk_full_cause(exc: BaseException) -> BaseException | None:
    """The ENOSPC / EDQUOT error in ``exc``'s chain."""
    for error in _chain(exc):
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return error
        if any(os.strerror(code) in str(error) for code in DISK_FULL):  # Rust and C++ writers report it as text
            return error
    return None


def mount_point(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    while path != path.parent and path.parent.stat().st_dev == path.stat().st_dev:
        path = path.parent
    return path


def full_filesystems(exc: BaseException, out_dirs: list[Path]) -> dict[Path, int] | None:
    """The filesystems ``exc`` may have filled (mount point -> free bytes at the failure), or None when it was no
    full disk. Call it before the failed export's files are removed: some writers lose the errno (numpy's
    ``tofile``, under the ONNX exporter, raises ``OSError('problem writing element N to file')``), so a failure with
    an ``OSError`` in its chain while a candidate filesystem has under ``NEARLY_FULL`` bytes left counts too.
    Candidates: the failing file's filesystem when the error names one, else the outputs' (staging and scratch live
    beside them) and the temporary directory's (ONNX Runtime's quantizer and Core ML's isolated conversions write
    there)."""
    cause = disk_full_cause(exc)
    named = getattr(cause, "filename", None)
    places = [Path(named)] if named else [out.parent for out in out_dirs] + [Path(tempfile.gettempdir())]
    free = {mount: shutil.disk_usage(mount).free for mount in dict.fromkeys(map(mount_point, places))}
    if cause is not None:
        return free
    if not isinstance(exc, Exception) or not any(isinstance(e, OSError) for e in _chain(exc)):
        return None  # an interrupt, or a failure no write caused
    return {mount: size for mount, size in free.items() if size < NEARLY_FULL} or None


def disk_full_error(out_dirs: list[Path], full: dict[Path, int]) -> ExportError:
    """The one-line error of a full disk, with each filesystem's free space measured now (after the export removed
    what it wrote); the fix names the one that had the least when the export failed."""
    temp = mount_point(Path(tempfile.gettempdir()))
    fullest = min(full, key=lambda mount: full[mount])
    text = "; ".join(f"{shutil.disk_usage(mount).free / 1e6:.1f} MB free on {mount}"
                     f"{' (temporary files)' if mount == temp else ''}" for mount in full)
    extra = " (or set TMPDIR to a larger filesystem)" if fullest == temp and len(full) > 1 else ""
    return ExportError(f"no space left on device while exporting {' and '.join(map(str, out_dirs))}; the partial "
                       f"export was removed ({text} now)", f"free space on {fullest} or choose another --out{extra}")


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
