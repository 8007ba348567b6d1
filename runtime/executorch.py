"""ExecuTorch backend session: the runtime's named-tensor contract over a ``.pte`` program (method ``forward``).

ExecuTorch's Python bindings link torch, which the runtime never imports: a ``.pte`` component is executed by a
*predictor* the caller injects (``open_session(..., predictor=...)``), as Core ML packages are. The export side has
one over ``executorch.runtime`` (``export.targets.executorch.predictor``), which ``pocketvlm parity``, the golden
record and the CLI inject; with nothing injected a ``.pte`` bundle is refused with a typed error. On a phone the
program runs in ExecuTorch's own runtime (its Android / iOS libraries).

This is ``CoreMLSession`` with two differences: the inputs are passed as a list in the manifest's order, and the
stateful ``text_decoder`` (KV cache in the program's mutable buffers) has a dynamic sequence of 1 to
``prefill_length`` new tokens, so prompt chunks are not padded; the ``attention_mask`` is ``[1, kv_capacity + N]``
and ``cache_position`` the N slots written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pocketvlm.runtime.coreml import CoreMLSession
from pocketvlm.runtime.errors import BundleError

# dimension names that follow the number of new tokens of one decoder call (dynamic in the program)
SEQUENCE_DIMS = ("sequence", "image_tokens", "past_sequence")


class ProgramPredictor(Protocol):
    """Runs one method of a ``.pte``: ``execute`` takes the inputs in order, ``state`` is an object from
    ``make_state`` (a loaded method with its own mutable buffers; None: the default one)."""

    name: str

    def execute(self, inputs: list[np.ndarray], state: Any = None) -> list[np.ndarray]: ...

    def make_state(self) -> Any: ...


class ExecuTorchSession(CoreMLSession):
    """One ExecuTorch component (see the module docstring)."""

    engine, target = "ExecuTorch", "executorch"
    padded = False

    def __init__(self, path: Path, component: dict[str, Any], predictor: ProgramPredictor | None = None) -> None:
        super().__init__(path, component, predictor)  # type: ignore[arg-type]
        shapes = {t["name"]: t["shape"] for t in component["inputs"]}
        self._dynamic = {name: tuple(d in SEQUENCE_DIMS for d in shapes.get(name, ("sequence",)))
                         for name in self.inputs} if self.owns_kv_cache else {}

    @staticmethod
    def missing_predictor(path: Path) -> BundleError:
        return BundleError(f"{path.name} is an ExecuTorch program: it runs on the export side (executorch.runtime, "
                           "which needs torch) or on a device in ExecuTorch's runtime, not in the thin runtime",
                           "check it with 'pocketvlm parity' (pip install 'pocketvlm[executorch]'), or pass "
                           "predictor=export.targets.executorch.predictor.ProgramRunner")

    def fits(self, name: str, shape: tuple[int, ...], static: tuple[int, ...]) -> bool:
        dynamic = self._dynamic.get(name)
        if dynamic is None or len(shape) != len(static) or len(dynamic) != len(static):
            return shape == static
        return all(1 <= s <= top if dyn else s == top for s, top, dyn in zip(shape, static, dynamic, strict=True))

    def _call(self, feeds: dict[str, np.ndarray], function: str | None = None) -> dict[str, np.ndarray]:
        return super()._call(feeds)  # one method, "forward": the chunk's entry name does not pick one

    def predict(self, feeds: dict[str, np.ndarray], function: str | None) -> dict[str, np.ndarray]:
        runner: Any = self._predictor  # a ProgramPredictor (the Core ML base class types it as a Predictor)
        outputs = runner.execute([feeds[name] for name in self.inputs], self._state)
        return dict(zip(self.output_names, outputs, strict=False))
