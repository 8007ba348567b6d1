"""``executorch.runtime`` as a runtime predictor for ``.pte`` components (``runtime.executorch.ProgramPredictor``).

ExecuTorch's Python bindings link torch, so this lives on the export side (the ``executorch`` extra): the runtime's
``ExecuTorchSession`` takes any predictor, and ``local_predictor`` is the one factory the golden record,
``pocketvlm parity`` and the CLI inject. It picks by the file's format: ``.pte`` programs run here, Core ML packages
on whatever runs them on this machine (``fallback``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.runtime.errors import BundleError

METHOD = "forward"


class ProgramRunner:
    """One ``.pte`` program's ``forward`` through ``executorch.runtime`` (XNNPACK and portable kernels on CPU). A
    state is a freshly loaded method: its own mutable buffers (the decoder's KV cache)."""

    def __init__(self, path: Path) -> None:
        try:
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise BundleError(f"{path.name} is an ExecuTorch program, and running it needs executorch, which is not "
                              "installed", 'pip install "pocketvlm[executorch]"') from exc
        from importlib import metadata

        try:
            self._program = Runtime.get().load_program(str(path))
            self._method = self._program.load_method(METHOD)
        except Exception as exc:  # the bindings raise RuntimeError / ValueError for a bad program
            raise BundleError(f"ExecuTorch cannot load {path.name}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                              "re-export the bundle with --target executorch") from exc
        self.name = f"executorch {metadata.version('executorch')} runtime (XNNPACK, CPU)"

    def execute(self, inputs: list[np.ndarray], state: Any = None) -> list[np.ndarray]:
        import torch

        method = state if state is not None else self._method
        outputs = method.execute([torch.from_numpy(np.ascontiguousarray(v)) for v in inputs])
        return [o.detach().numpy().copy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in outputs]

    def make_state(self) -> Any:
        return self._program.load_method(METHOD)


def local_predictor(fallback: Callable[[Path], Any] | None = None) -> Callable[[Path], Any]:
    """The predictor factory for every injected format on this machine: ``.pte`` -> ``ProgramRunner``, anything else
    -> ``fallback`` (Core ML's predictor here; None: refused by the runtime with its own typed error)."""

    def make(path: Path) -> Any:
        if Path(path).suffix == ".pte":
            return ProgramRunner(path)
        return fallback(path) if fallback else None

    return make
