"""Golden-record fixtures for the engine core's JVM tests (BundleTest.kt, GoldenTest.kt, ResultTest.kt).

``write(out, bundles)`` copies, from each exported bundle, what the replay reads without a model: ``manifest.json``,
the tokenizer, ``golden.json``, ``golden.png`` and the app block's vision feeds file when the manifest has one (no
model files: the manifest still lists them, and the Kotlin tests check that a missing model file is refused when
verified). ``out/golden/index.json`` names each copy with its task, whether its manifest has an ``app`` block, its
stage names and the Python-recorded generation (ids, stop reason) or text ids, so a test fails when a stage it
should run does not run. ResultTest writes the device result files it builds into ``out/results/``
(``result_files``), for the Python side to validate against the bench schema and to find among the device rows
``benchmarks/report.py`` writes (``device_rows``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

RESULTS = "results"
REPORT = Path(__file__).resolve().parents[2] / "benchmarks" / "report.py"


def _needed(manifest: dict[str, Any]) -> list[str]:
    names = ["manifest.json", manifest["tokenizer"]["file"], manifest["golden"]["file"], manifest["golden"]["image"]]
    feeds = manifest.get("app", {}).get("vision_feeds")
    if feeds:
        names.append(feeds["file"])
    return list(dict.fromkeys(names))


def _expected(manifest: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    stages = {stage["name"]: stage for stage in record["stages"]}
    if manifest["task"] == "image_text_to_text":
        generation = stages["generation"]
        return {"token_ids": generation["token_ids"], "stop_reason": generation["stop_reason"],
                "text": generation["text"], "input_ids": stages["prompt"]["input_ids"],
                "steps": len(stages["text_decoder"]["steps"])}
    return {"input_ids": stages["text"]["input_ids"], "prompts": stages["text"]["prompts"]}


def write(out: Path, bundles: dict[str, Path]) -> None:
    """Copies each bundle's manifest, tokenizer, golden record and image (and vision feeds) to ``out/golden/NAME``."""
    root = out / "golden"
    root.mkdir(parents=True, exist_ok=True)
    (out / RESULTS).mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {}
    for name, bundle in bundles.items():
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
        if "golden" not in manifest:
            raise AssertionError(f"{bundle} has no golden record: export it with this pocketvlm version")
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        for file in _needed(manifest):
            shutil.copyfile(bundle / file, target / file)
        record = json.loads((bundle / manifest["golden"]["file"]).read_text(encoding="utf-8"))
        index[name] = {"task": manifest["task"], "family": manifest["family"], "target": manifest["target"],
                       "has_app": "app" in manifest, "stages": [stage["name"] for stage in record["stages"]],
                       "expected": _expected(manifest, record)}
    (root / "index.json").write_text(json.dumps({"bundles": index}, indent=1), encoding="utf-8")


def result_files(out: Path) -> list[Path]:
    """The device result files ResultTest.kt wrote under ``out`` (after the JUnit run)."""
    return sorted((out / RESULTS).glob("*.result.json"))


def device_rows(files: list[Path]) -> list[str]:
    """The rows ``benchmarks/report.py`` writes for ``files`` in its "Measured on devices" table (one per file)."""
    spec = importlib.util.spec_from_file_location("pocketvlm_benchmarks_report", REPORT)
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    results = [dict(json.loads(path.read_text(encoding="utf-8")), _file=path.name) for path in files]
    assert all(report.on_device(result) for result in results), "not device result files"
    table = report.device_markdown(results)
    return [line for line in table if line.startswith("| ") and not line.startswith("| device |")]
