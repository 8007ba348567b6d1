"""What the QNN execution provider says about each node, read from its verbose log (severity 0, written on fd 2).

The EP validates every node unit against the HTP backend and logs ``Validation FAILED for N nodes in OrtNodeUnit
(Op)`` with the node's name and a ``REASON`` line; the backend's own refusal (``backendValidateOpConfig() failed
... with error code C``) comes just before. Validation runs more than once per session, so the last word per node
wins. Error lines (``[E:``) and the backend's own error lines are kept for compile failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FAILED = re.compile(r"Validation FAILED for \d+ nodes in OrtNodeUnit \((?P<unit>[^)]*)\)")
NODE = re.compile(r"Operator type: (?P<op>\S+) Node name: (?P<node>\S+)")
REASON = re.compile(r"REASON\s*:\s*(?P<reason>.+)")
BACKEND = re.compile(r"backendValidateOpConfig\(\) failed for node `(?P<node>[^`]+)` of type `(?P<type>[^`]+)` "
                     r"with error code (?P<code>\d+)")
UNSUPPORTED = re.compile(r"Operators? of type `?(?P<op>[A-Za-z0-9_]+)`? (?:is|are) not supported", re.I)
ERROR = re.compile(r"\[E:|\bQnnDsp <E>|\bQnnHtp <E>|<E>\s|::ERROR:")
BACKEND_ERROR = re.compile(r"::ERROR:")  # the HTP's own op-level errors (e.g. "relu.cc:202::ERROR:reluXY limit ...")


@dataclass
class EpLog:
    reasons: dict[str, str] = field(default_factory=dict)  # node name -> the EP's reason
    unsupported_ops: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    backend_errors: list[str] = field(default_factory=list)

    def reason(self, node: str, op: str) -> str:
        if node in self.reasons:
            return self.reasons[node]
        if op in self.unsupported_ops:
            return f"operators of type {op} are not supported by the QNN EP"
        return "no reason logged by the QNN EP (the node was not offered to it, e.g. a CPU-only partition boundary)"


def parse(text: str) -> EpLog:
    found = EpLog()
    backend: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if match := BACKEND.search(line):
            backend[match["node"]] = f"HTP backend refused {match['type']} (QNN error {match['code']})"
        elif match := FAILED.search(line):
            node = reason = None
            for follow in lines[i + 1 : i + 6]:
                if (hit := NODE.search(follow)) and node is None:
                    node = hit["node"]
                elif hit := REASON.search(follow):
                    reason = hit["reason"].strip()
                    break
            if node:
                code = next((v for k, v in backend.items() if k == node or k.startswith(node + "_")), None)
                found.reasons[node] = "; ".join(r for r in (reason, code) if r) or "validation failed"
        elif match := UNSUPPORTED.search(line):
            found.unsupported_ops.add(match["op"])
        if ERROR.search(line):
            found.errors.append(_strip(line))
        if BACKEND_ERROR.search(line):
            found.backend_errors.append(_strip(line))
    return found


def _strip(line: str) -> str:
    """A log line without its ANSI colour codes and timestamp."""
    line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
    return re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s*", "", line)
