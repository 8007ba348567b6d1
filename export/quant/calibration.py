"""Calibration recorders: stand in for runtime sessions and keep the feeds they run, so an fp32 bundle run through
the runtime on representative inputs yields each target's calibration data (per graph for ONNX and Core ML, per
signature for LiteRT)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pocketvlm.runtime.backends import SessionProxy


class FeedRecorder(SessionProxy):
    """Stands in for a runtime ``Session`` and keeps a copy of every feed it runs: run an fp32 bundle through the
    runtime on representative inputs with its session wrapped, and the feeds are the calibration data for GPTQ."""

    def __init__(self, session: Any) -> None:
        super().__init__(session)
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append({name: np.array(value, copy=True) for name, value in feeds.items()})
        return self.session.run(feeds)


class SignatureFeedRecorder(SessionProxy):
    """Stands in for a runtime ``LiteRTSession`` and keeps the static feeds of every signature call: run an fp32
    LiteRT bundle through the runtime on representative inputs with its sessions wrapped, and ``feeds`` (signature
    name -> feeds) is GPTQ calibration data for ai-edge-quantizer. ``every`` keeps one ``decode`` call in that many
    (each decode feed carries the whole KV buffer)."""

    def __init__(self, session: Any, every: int = 4) -> None:
        super().__init__(session)
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in session.runners}
        for name, runner in session.runners.items():
            session.runners[name] = _Recording(runner, self.feeds[name], every if name == "decode" else 1)


class _Recording:
    def __init__(self, runner: Any, store: list[dict[str, np.ndarray]], every: int) -> None:
        self.runner, self.store, self.every, self.calls = runner, store, every, 0
        self.inputs, self.name = runner.inputs, runner.name

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.calls % self.every == 0:
            self.store.append({k: np.array(feeds[k], dtype=dtype) for k, (_, dtype) in self.inputs.items()})
        self.calls += 1
        return self.runner(feeds)
