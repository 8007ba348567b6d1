"""The verdict of a parity report: one ``Check`` per line (a measured figure, a comparison, the registered threshold),
for dual-encoder and VLM parity alike. Thresholds come only from the family's ``Tolerances`` (``export/spec.py``,
declared in the family modules); a check whose method the registry does not name is not made.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pocketvlm.export.spec import Tolerances

# coarsest last: a bundle whose components differ in method is judged end to end by its coarsest one
METHOD_ORDER = ("fp32", "fp16", "int8", "int4", "palette4")
OPERATORS = (">=", "<=", "==")


@dataclass(frozen=True)
class Check:
    """One verdict line: ``component`` (a component name, ``preprocessing`` or ``end_to_end``), what was measured,
    the figure, the comparison and the threshold, and where the figure comes from (the worst photo, step or prompt)."""

    component: str
    name: str
    measured: float
    op: str
    threshold: float
    method: str = ""
    where: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(f"unknown comparison {self.op!r} (use one of {OPERATORS})")

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.measured):  # NaN or inf logits / embeddings fail every check
            return False
        if self.op == ">=":
            return self.measured >= self.threshold
        if self.op == "<=":
            return self.measured <= self.threshold
        return self.measured == self.threshold

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "check": self.name, "measured": self.measured, "op": self.op,
                "threshold": self.threshold, "method": self.method, "where": self.where, "pass": self.passed}

    def line(self) -> str:
        where = f"  ({self.where})" if self.where else ""
        return (f"{self.component:<20}{self.name:<44}{self.method:<9}{_figure(self.measured):>12} {self.op} "
                f"{_figure(self.threshold):<11}{'PASS' if self.passed else 'FAIL'}{where}")


def _figure(value: float) -> str:
    """Six decimals (cosines near 1 stay readable), scientific notation for small or large errors."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.6f}" if 1e-3 <= abs(value) < 1e5 else f"{value:.3e}"


def check(component: str, name: str, measured: float, op: str, threshold: float | None, method: str = "",
          where: str = "") -> list[Check]:
    """``[Check]``, or ``[]`` where the registry holds no threshold for this method (the check is not made)."""
    if threshold is None:
        return []
    return [Check(component, name, float(measured), op, float(threshold), method, where)]


def coarsest(methods: Iterable[str]) -> str:
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return max(methods, key=lambda m: order.get(m, len(METHOD_ORDER)))


def component_checks(tolerances: Tolerances, component: str, method: str, target: str, comparison: dict[str, Any],
                     where: str = "") -> list[Check]:
    """Cosine, max abs and max abs over the reference's scale of one component's outputs (a ``Comparison`` as a
    dict, with ``reference_max_abs``), against the registered thresholds of its method on this target."""
    limit = lambda table: tolerances.limit(table, method, target, component)  # noqa: E731
    scale = max(float(comparison["reference_max_abs"]), 1e-30)
    return (check(component, "output cosine, worst row", comparison["cosine_min"], ">=", limit("min_cosine"), method,
                  where)
            + check(component, "output max abs error", comparison["max_abs"], "<=", limit("max_abs"), method, where)
            + check(component, "output max abs error / reference max", comparison["max_abs"] / scale, "<=",
                    limit("max_abs_relative"), method, where))


def slack(line: Check) -> float:
    """How far inside its threshold a figure is (negative: failing)."""
    if not line.passed:
        return -math.inf if not math.isfinite(line.measured) else -abs(line.measured - line.threshold)
    return {">=": line.measured - line.threshold, "<=": line.threshold - line.measured, "==": 0.0}[line.op]


def worst_per_line(checks: list[Check]) -> list[Check]:
    """One line per (component, check): the least favourable of its per-photo figures, in first-seen order."""
    worst: dict[tuple[str, str], Check] = {}
    for line in checks:
        key = (line.component, line.name)
        if key not in worst or slack(line) < slack(worst[key]):
            worst[key] = line
    return list(worst.values())


def verdict(checks: list[Check]) -> dict[str, Any]:
    """The report's verdict section: every line with its result, and the overall pass (no check is no pass)."""
    return {"checks": [c.to_json() for c in checks], "pass": bool(checks) and all(c.passed for c in checks),
            "failed": [f"{c.component}: {c.name}" for c in checks if not c.passed]}


def format_checks(report: dict[str, Any]) -> list[str]:
    """The verdict lines of a report (the JSON form of each ``Check``) and the overall result."""
    lines = [f"{'component':<20}{'check':<44}{'method':<9}{'measured':>12}    {'threshold':<11}result"]
    for row in report["checks"]:
        lines.append(Check(row["component"], row["check"], row["measured"], row["op"], row["threshold"],
                           row["method"], row["where"]).line())
    failed = report["failed"]
    lines.append(f"parity: {'PASS' if report['pass'] else 'FAIL'} ({len(report['checks']) - len(failed)} of "
                 f"{len(report['checks'])} checks pass" + (f"; failed: {', '.join(failed)})" if failed else ")"))
    return lines
