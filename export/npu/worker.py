"""The child process that talks to the QNN HTP backend: ``python -m pocketvlm.export.npu.worker REQUEST.json``.

The backend can crash the process (a segfault in graph preparation was seen), so the exporter and ``npu-check``
never call it in their own process. The request names one ONNX graph, the SoC, the dims to pin, and optionally where
to write the EPContext model and feeds to run (an ``.npz``). The verbose EP log goes to the request's log file
(fd 2 is redirected there, where the EP writes it); the result is one JSON object on the last line of stdout.
Outputs of the run are written to ``outputs`` (``.npz``), from the compiled context when one was written (what
ships), else from the session itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.runtime.errors import PocketVLMError
from pocketvlm.runtime.qnn import SOCS, htp_session, placement, session_options


def main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 2)
    soc = SOCS[request["soc"]]
    context = Path(request["context"]) if request.get("context") else None
    result: dict[str, Any] = {"ok": False}
    try:
        start = time.perf_counter()
        options = session_options(soc, request.get("overrides") or {}, record_placement=True,
                                  context_path=context, log_severity=0 if request.get("verbose", True) else 3)
        session = htp_session(Path(request["model"]), options)
        result["compile_seconds"] = round(time.perf_counter() - start, 3)
        where = placement(session)
        result.update(ok=True, htp_nodes=where.htp_nodes, partitions=where.partitions,
                      cpu_nodes=[list(n) for n in where.cpu_nodes])
        if request.get("feeds"):
            if context is not None:
                del session
                session = htp_session(context, session_options(soc, log_severity=0 if request.get("verbose", True)
                                                               else 3))
            result["run_error"] = run(session, request)
    except PocketVLMError as exc:
        result.update(ok=False, error=exc.one_line())
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def run(session: Any, request: dict[str, Any]) -> str | None:
    """Run the request's feeds, write the outputs; the backend's execution error (as one line) if it fails."""
    with np.load(request["feeds"]) as data:
        feeds = {k: data[k] for k in data.files}
    names = [o.name for o in session.get_outputs()]
    try:
        outputs = session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()})
    except Exception as exc:  # ORT's RuntimeException carrying the QNN graph-execute error
        return " ".join(str(exc).split())[:400]
    np.savez(request["outputs"], **dict(zip(names, outputs, strict=True)))
    return None


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
