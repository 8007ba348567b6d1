"""Qualcomm's HTP (the Snapdragon NPU) through ONNX Runtime's QNN plugin execution provider (PyPI ``onnxruntime-qnn``).

On a phone the plugin drives the HTP itself; on x86_64 Linux the same HTP backend compiles graphs for a named SoC and
emulates the HTP's arithmetic (fp16 / fixed point), so outputs are the phone's while the timing means nothing.

The plugin's traps, handled here once:

- it is registered as a library and added per device (``add_provider_for_devices``); the legacy
  ``providers=["QNNExecutionProvider"]`` form silently runs on CPU, and so does a failed EP creation, so every
  session checks that the QNN provider really is in its provider list;
- without ``soc_model`` the emulator assumes an old SoC and fails with a misleading memory error, so a SoC is
  always named (``SOCS``);
- dynamic dimensions send every node to CPU, so the caller pins them (``overrides``).

A QNN bundle holds, per component and SoC, an EPContext model (a small ``.onnx`` naming its context binary) and the
compiled ``*_qnn.bin``. ``QnnSession`` runs one with the plugin; without the plugin it refuses, by name, rather than
falling back to the CPU. Needs only numpy, onnxruntime and onnxruntime-qnn.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.runtime.errors import BundleError, InputError, NpuError
from pocketvlm.runtime.static_decode import DECODE, StaticKVCache, run_rows

EP = "QNNExecutionProvider"
EXTRA = 'pip install "pocketvlm[npu]"'
SOC_ENV = "POCKETVLM_SOC"  # which SoC's context a QNN bundle runs when the caller does not say


@dataclass(frozen=True)
class Soc:
    name: str  # Qualcomm part number, as users know it: SM8650
    model: int  # QNN's soc_model id
    arch: str  # Hexagon HTP architecture
    marketing: str


# QNN's soc_model ids (QnnTypes.h QNN_SOC_MODEL_*, as published in Qualcomm's "Supported Snapdragon devices" table)
SOCS: dict[str, Soc] = {s.name: s for s in (
    Soc("SM8350", 30, "v68", "Snapdragon 888"),
    Soc("SM8450", 36, "v69", "Snapdragon 8 Gen 1"),
    Soc("SM8475", 42, "v69", "Snapdragon 8+ Gen 1"),
    Soc("SM8550", 43, "v73", "Snapdragon 8 Gen 2"),
    Soc("SM8635", 68, "v73", "Snapdragon 8s Gen 3"),
    Soc("SM8650", 57, "v75", "Snapdragon 8 Gen 3"),
    Soc("SM8735", 85, "v79", "Snapdragon 8s Gen 4"),
    Soc("SM8750", 69, "v79", "Snapdragon 8 Elite"),
    Soc("SM8850", 87, "v81", "Snapdragon 8 Elite Gen 5"),
)}


def parse_socs(text: str | list[str] | tuple[str, ...]) -> tuple[Soc, ...]:
    """``"SM8650,SM8750"`` -> their ``Soc`` records, in order, each once; an unknown name is refused with the list."""
    names = [n.strip().upper() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise InputError("no SoC named", f"pass --soc with one or more of {', '.join(SOCS)}")
    unknown = [n for n in names if n not in SOCS]
    if unknown:
        raise InputError(f"unknown SoC {', '.join(unknown)}", f"use one or more of {', '.join(SOCS)}")
    return tuple(SOCS[n] for n in dict.fromkeys(names))


def plugin() -> Any:
    """The ``onnxruntime_qnn`` module, or a one-line error naming the extra that installs it."""
    try:
        import onnxruntime_qnn
    except ImportError as exc:
        raise NpuError("the Qualcomm NPU path needs onnxruntime-qnn (ONNX Runtime's QNN plugin), which is not "
                       "installed", EXTRA) from exc
    return onnxruntime_qnn


def available() -> bool:
    try:
        plugin()
    except NpuError:
        return False
    return True


def versions() -> dict[str, str]:
    """The plugin's and the QAIRT SDK's versions (for manifests and reports)."""
    from onnxruntime_qnn import build_and_package_info as info

    return {"onnxruntime_qnn": str(info.__version__), "qairt": str(getattr(info, "qnn_version", "unknown"))}


_registered: list[Any] = []


def devices() -> list[Any]:
    """The QNN plugin's devices (registered once per process)."""
    import onnxruntime as ort

    module = plugin()
    if not _registered:
        try:
            ort.register_execution_provider_library(EP, module.get_library_path())
        except Exception as exc:  # ORT raises its own Fail type when the library cannot load
            raise NpuError(f"ONNX Runtime cannot load the QNN plugin: {str(exc).splitlines()[0]}",
                           "install an onnxruntime-qnn matching this onnxruntime (>= 1.24.2)") from exc
        _registered.append(module)
    found = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    if not found:
        raise NpuError("the QNN plugin registered no device", "reinstall onnxruntime-qnn")
    return found


def session_options(soc: Soc, overrides: dict[str, int] | None = None, record_placement: bool = False,
                    context_path: Path | None = None, log_severity: int = 3, threads: int = 0) -> Any:
    """Session options that put a graph on the HTP backend for ``soc``: free dims pinned to ``overrides``, per-node
    placement recorded when asked, and an EPContext model written to ``context_path`` when given (the binary goes
    beside it as ``<stem>_qnn.bin``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_severity
    if threads:
        options.intra_op_num_threads = threads
    for name, value in (overrides or {}).items():
        options.add_free_dimension_override_by_name(name, int(value))
    if record_placement:
        options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if context_path is not None:
        options.add_session_config_entry("ep.context_enable", "1")
        options.add_session_config_entry("ep.context_file_path", str(context_path))
        options.add_session_config_entry("ep.context_embed_mode", "0")
    options.add_provider_for_devices(devices(), {"backend_path": plugin().get_qnn_htp_path(),
                                                 "soc_model": str(soc.model)})
    return options


def htp_session(path: Path, options: Any) -> Any:
    """An ORT session on the HTP, or an ``NpuError``: a failed EP creation that fell back to CPU is refused."""
    import onnxruntime as ort

    try:
        with _backend_banner_hidden():
            session = ort.InferenceSession(str(path), sess_options=options)
    except Exception as exc:  # ORT's Fail / InvalidGraph / RuntimeException, and the backend's compile errors
        raise NpuError(f"the QNN HTP backend cannot load {Path(path).name}: {str(exc).strip().splitlines()[0]}",
                       "run `pocketvlm npu-check` on the bundle for the backend's reasons") from exc
    if EP not in session.get_providers():
        raise NpuError(f"ONNX Runtime created no QNN session for {Path(path).name} (it fell back to CPU)",
                       "check the onnxruntime / onnxruntime-qnn versions, and run with log severity 0 for why")
    return session


@contextlib.contextmanager
def _backend_banner_hidden() -> Iterator[None]:
    """The HTP backend prints a one-line banner ("# LIBNATIVE: No alternate configuration ...") on fd 1 when it first
    loads in a process; it would land in the middle of a caption on stdout. fd 1 points at /dev/null while the first
    session is made."""
    if _banner_shown:
        yield
        return
    _banner_shown.append(True)
    sys.stdout.flush()
    try:
        saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no fd 1 to hide
        yield
        return
    os.dup2(null, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


_banner_shown: list[bool] = []


@dataclass
class NodeShare:
    """How many of a graph's nodes the HTP took, in how many partitions, and which stayed on CPU."""

    htp_nodes: int = 0
    partitions: int = 0
    cpu_nodes: list[Any] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.htp_nodes + len(self.cpu_nodes)

    @property
    def share(self) -> float:
        return self.htp_nodes / self.total if self.total else 0.0


@dataclass
class Placement(NodeShare):
    """Where ONNX Runtime put each node of one session; ``cpu_nodes`` as (node name, op type)."""

    def cpu_ops(self) -> dict[str, int]:
        return dict(Counter(op for _, op in self.cpu_nodes).most_common())


def placement(session: Any) -> Placement:
    """Per-node placement of a session made with ``record_placement`` (ORT's graph assignment info)."""
    found = Placement()
    for subgraph in session.get_provider_graph_assignment_info():
        nodes = subgraph.get_nodes()
        if subgraph.ep_name == EP:
            found.htp_nodes += len(nodes)
            found.partitions += 1
        else:
            found.cpu_nodes += [(n.name, n.op_type) for n in nodes]
    return found


def chosen_soc(record: dict[str, Any], soc: str | None = None) -> str:
    """Which compiled SoC of a component to run: ``soc``, else ``$POCKETVLM_SOC``, else the first one compiled."""
    contexts = record["qnn"]["contexts"]
    wanted = (soc or os.environ.get(SOC_ENV) or next(iter(contexts))).upper()
    if wanted not in contexts:
        raise BundleError(f"this QNN bundle was compiled for {', '.join(contexts)}, not {wanted}",
                          f"set {SOC_ENV} to one of {', '.join(contexts)}, or re-export with --soc {wanted}")
    return wanted


class QnnSession:
    """One component of a QNN bundle on the HTP (a phone's, or the x86 emulator): one EPContext session per entry
    (an encoder's one, or a decoder's ``prefill_N`` and ``decode``). Encoders exported at batch 1 loop over rows;
    a decoder owns its fixed-capacity KV cache (``StaticKVCache``), like the LiteRT and Core ML ones."""

    reentrant = False  # the static KV cache holds state between calls (models take turns: backends.turns)

    def __init__(self, bundle_dir: Path, record: dict[str, Any], soc: str | None = None, threads: int = 0) -> None:
        self.soc = chosen_soc(record, soc)
        target = SOCS[self.soc]
        context = record["qnn"]["contexts"][self.soc]
        self.input_names = tuple(t["name"] for t in record["inputs"])
        self.output_names = tuple(t["name"] for t in record["outputs"])
        self.static = dict(record["static"])
        self.entries: dict[str, Any] = {}
        self.shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        for entry, files in context["entries"].items():
            session = htp_session(bundle_dir / files["model"], session_options(target, threads=threads))
            self.entries[entry] = session
            self.shapes[entry] = {i.name: tuple(int(d) for d in i.shape) for i in session.get_inputs()}
        info = versions()
        self.backend = (f"onnxruntime-qnn {info['onnxruntime_qnn']} (QAIRT {info['qairt']}) HTP {self.soc} "
                        f"{target.arch}{' (x86_64 emulator)' if os.uname().machine == 'x86_64' else ''}")
        self.owns_kv_cache = DECODE in self.entries
        self.cache = None
        if self.owns_kv_cache:
            decode = {i.name: (self.shapes[DECODE][i.name], _dtype(i.type)) for i in self.entries[DECODE].get_inputs()}
            self.cache = StaticKVCache(decode, int(self.static["kv_capacity"]), "QNN", decode["attention_mask"][1])

    def _call(self, entry: str) -> Any:
        session, shapes = self.entries[entry], self.shapes[entry]
        names = [o.name for o in session.get_outputs()]

        def call(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            cast = {}
            for i in session.get_inputs():
                value = np.asarray(feeds[i.name])
                if value.shape != shapes[i.name]:
                    raise InputError(f"input '{i.name}' has shape {list(value.shape)}, but entry '{entry}' of this "
                                     f"QNN bundle is fixed at {list(shapes[i.name])}",
                                     "re-export with --target qnn and static shapes that cover this input")
                cast[i.name] = np.ascontiguousarray(value, dtype=_dtype(i.type))
            return dict(zip(names, session.run(names, cast), strict=True))

        return call

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.cache is not None:
            return self.cache.run(feeds, {name: self._call(name) for name in self.entries},
                                  int(self.static["image_token_id"]))
        (entry,) = self.entries
        return run_rows(self._call(entry), feeds, self.static.get("loop_inputs") or [], self.shapes[entry],
                        self.output_names)

    def reset(self) -> None:
        if self.cache is not None:
            self.cache.reset()


def _dtype(onnx_type: str) -> Any:
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
            "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8}.get(onnx_type, np.float32)
