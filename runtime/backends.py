"""Backend sessions: one small protocol that ONNX Runtime, LiteRT and Core ML (and later torch) implement.

Pre- and post-processing live in the runtime once and run over any ``Session``; a backend only maps named numpy
inputs to named numpy outputs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pocketvlm.runtime.errors import BundleError, InferenceError
from pocketvlm.runtime.manifest import Bundle

if TYPE_CHECKING:
    from pocketvlm.runtime.coreml import PredictorFactory


class Session(Protocol):
    """What the runtime relies on from every backend session (and from stand-ins such as calibration recorders).

    ``backend`` says what actually runs the component, for reports (``onnxruntime 1.20.1 CPUExecutionProvider``).
    ``reentrant``: ONNX Runtime's ``InferenceSession.run`` is thread-safe, so one loaded model serves several threads
    at once; a LiteRT interpreter, a Core ML predictor and a session that owns a KV cache are not, and the models
    serialise their calls (``turns``). A session without the attribute counts as not reentrant.
    ``owns_kv_cache``: a decoder that keeps its KV cache itself (LiteRT, Core ML: static capacity, one cache per
    session). Its callers pass no ``past_*`` buffers, only an ``attention_mask`` whose filled slots say how many tokens
    they believe are cached, and ignore ``present_*``; ``reset()`` starts a new sequence. Sessions that do not own a
    cache (ONNX Runtime: the caller's ``past_*`` in, the new ``present_*`` out) have ``reset()`` as a no-op.
    """

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    backend: str
    owns_kv_cache: bool
    reentrant: bool  # ``run`` may be called from several threads at once (ONNX Runtime's CPU sessions)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def reset(self) -> None: ...


class SessionProxy:
    """Forwards the ``Session`` protocol to the session it wraps: the base of stand-ins that watch a session's calls
    (calibration recorders) while the runtime drives it."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.input_names, self.output_names = session.input_names, session.output_names
        self.backend, self.owns_kv_cache = session.backend, session.owns_kv_cache
        self.reentrant = getattr(session, "reentrant", False)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.session.run(feeds)

    def reset(self) -> None:
        self.session.reset()


class OrtSession:
    """An ONNX Runtime inference session over one bundle component."""

    owns_kv_cache = False  # a decoder graph reads the caller's past_* buffers and returns the new entries
    reentrant = True  # InferenceSession.run is thread-safe; each call has its own inputs and outputs

    def __init__(self, path: Path, providers: list[str] | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise BundleError(f"ONNX Runtime cannot load {path.name}: {exc}".splitlines()[0],
                              "re-export the bundle, or upgrade onnxruntime to the version in the manifest") from exc
        self.name = path.name
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self.providers = tuple(self._session.get_providers())
        self.backend = f"onnxruntime {ort.__version__} {' + '.join(self.providers)}"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        used = {name: feeds[name] for name in self.input_names}
        try:
            outputs = self._session.run(list(self.output_names), used)
        except Exception as exc:  # ORT raises its own InvalidArgument / Fail / RuntimeException types
            raise InferenceError(f"ONNX Runtime failed running {self.name}: {str(exc).splitlines()[0][:200]}",
                                 "check the inputs (token ids within the vocabulary, image sizes the bundle "
                                 "takes); if they are right, re-export the bundle") from exc
        return dict(zip(self.output_names, outputs))

    def reset(self) -> None:
        """Nothing to forget: the caller holds the KV cache."""


def turns(sessions: Iterable[Session]) -> AbstractContextManager[Any]:
    """What a model holds around a request that runs ``sessions``: nothing when every one is reentrant, else one
    lock, so that threads sharing a LiteRT, Core ML or HTP model take turns instead of corrupting its state."""
    if all(getattr(session, "reentrant", False) for session in sessions):
        return nullcontext()
    return threading.Lock()


def open_session(bundle: Bundle, component: str, providers: list[str] | None = None, threads: int = 0,
                 predictor: PredictorFactory | None = None) -> Session:
    """A session for one component, by its format. ``providers`` and ``threads`` apply to ONNX Runtime (threads to
    LiteRT too); ``predictor`` makes the predictor of a Core ML package or an ExecuTorch program (the CLI passes Core
    ML itself on macOS and ``executorch.runtime`` where installed, verification pocketvlm's reference evaluator;
    without one such a bundle is refused)."""
    spec = bundle.component(component)
    if spec.format == "onnx":
        return OrtSession(bundle.file(spec.file), providers=providers, threads=threads)
    if spec.format == "tflite":
        from pocketvlm.runtime.litert import LiteRTSession

        return LiteRTSession(bundle.file(spec.file), bundle.manifest["components"][component], threads=threads)
    if spec.format == "mlpackage":
        from pocketvlm.runtime.coreml import CoreMLSession

        package = bundle.file(spec.file)
        return CoreMLSession(package, bundle.manifest["components"][component],
                             predictor(package) if predictor else None)
    if spec.format == "pte":
        from pocketvlm.runtime.executorch import ExecuTorchSession

        program = bundle.file(spec.file)
        return ExecuTorchSession(program, bundle.manifest["components"][component],
                                 predictor(program) if predictor else None)
    if spec.format == "qnn_context":
        from pocketvlm.runtime.qnn import QnnSession

        return QnnSession(bundle.path, bundle.manifest["components"][component], threads=threads)
    raise BundleError(f"component '{component}' has format '{spec.format}', which this runtime cannot run",
                      "export with --target onnx, tflite, coreml, qnn or executorch")
