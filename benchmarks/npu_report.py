"""The benchmark report's NPU section: Qualcomm's HTP compiler verdict (``npu_coverage_*.json``, written by
``benchmarks/npu_coverage.py`` through ``pocketvlm npu-check``) beside the published-table delegate coverage of the
same model's LiteRT bundle (``delegates_<model>_*.json``) where one was measured. The two answer different
questions (a table of op support replayed on a graph, against the vendor's own compiler on the graph as it ships),
so both are shown, and a row says where they disagree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def published(folder: Path, model: str, component: str) -> dict[str, float] | None:
    """GPU and NNAPI shares of ``component`` in the first LiteRT delegate file of ``model`` (its first signature)."""
    for path in sorted(folder.glob(f"delegates_{model}_*.json")):
        rows = json.loads(path.read_text())["delegates"].get(component)
        if rows:
            first = next(iter(rows.values()))
            return {"gpu": first["gpu"]["share"], "nnapi": first["nnapi"]["share"], "file": path.name}
    return None


def cpu_ops(pinned: dict[str, Any]) -> str:
    ops = pinned.get("cpu_ops") or []
    return "; ".join(f"{o['op']} x{o['nodes']} ({o['reason']})" for o in ops[:3]) or "none"


def npu_markdown(folder: Path) -> list[str]:
    files = sorted(folder.glob("npu_coverage_*.json"))
    if not files:
        return []
    first = json.loads(files[0].read_text())["npu_check"]
    lines = [f"## NPU coverage: Qualcomm HTP compiler (QAIRT {first['qairt']}, onnxruntime-qnn "
             f"{first['onnxruntime_qnn']}) beside the published delegate tables", "",
             "Full-size architectures with random weights, today's dynamic-shape ONNX export, compiled for each SoC "
             "as exported and with the dims pinned to what the runtime feeds. Compile times are this x86_64 host's; "
             "the emulated outputs are the HTP's arithmetic, and no emulator time is a phone latency.", "",
             "| model | component | SoC | HTP as exported | HTP pinned | partitions | left on CPU (EP's reason) | "
             "context MB | compile s | emulated cosine vs CPU fp32 | published tables, LiteRT bundle: GPU / NNAPI |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---|"]
    notes = []
    for path in files:
        result = json.loads(path.read_text())
        report = result["npu_check"]
        for component, data in report["components"].items():
            table = published(folder, result["model"], component)
            for entry, rows in data["entries"].items():
                for soc in report["socs"]:
                    row = rows[soc]
                    exported, pinned = row["as_exported"], row["pinned"]
                    errors = row.get("error_vs_cpu") or {}
                    cosine = min((e["cosine"] for e in errors.values()), default=None)
                    shown = (f"{table['gpu'] * 100:.0f}% / {table['nnapi'] * 100:.0f}% ({table['file']})" if table
                             else "no LiteRT bundle measured")
                    lines.append(
                        f"| {result['model']} | {component if entry == component else f'{component}/{entry}'} | "
                        f"{soc} | {share(exported)} | {share(pinned)} ({fmt(rows['pinned_dims'])}) | "
                        f"{pinned.get('partitions', '-')} | {cpu_ops(pinned)} | "
                        f"{pinned.get('context_bytes', 0) / 1e6:.1f} | {pinned.get('compile_seconds', 0):.1f} | "
                        f"{'-' if cosine is None else f'{cosine:.5f}'} | {shown} |")
                    if table and exported.get("compiled") and table["nnapi"] >= 0.5 > exported["share"]:
                        notes.append(f"- {result['model']} {component} on {soc}: the NNAPI table accepts "
                                     f"{table['nnapi'] * 100:.0f}% of the LiteRT graph's nodes, while the HTP "
                                     f"compiler takes {exported['share'] * 100:.1f}% of the ONNX graph as exported "
                                     f"({row.get('dynamic_shapes', 'dynamic shapes')}); the two disagree, and the "
                                     "compiler is the one that runs on the phone.")
                    if table and pinned.get("compiled") and table["nnapi"] < 0.5 <= pinned["share"]:
                        notes.append(f"- {result['model']} {component} on {soc}: the NNAPI table accepts "
                                     f"{table['nnapi'] * 100:.0f}% of the LiteRT bundle's graph ({table['file']}), "
                                     f"while the HTP compiler takes {pinned['share'] * 100:.1f}% of the ONNX graph "
                                     "with its dims pinned: they judge different artifacts (the table's bundle "
                                     "quantization, Android's NNAPI path) and disagree; both are shown.")
    lines += ["", *dict.fromkeys(notes), "", "Result files: " + ", ".join(p.name for p in files), ""]
    return lines


def share(row: dict[str, Any]) -> str:
    if not row.get("compiled"):
        return "compile failed"
    return f"{row['share'] * 100:.1f}% ({row['htp_nodes']}/{row['total_nodes']})"


def fmt(pins: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in pins.items())
