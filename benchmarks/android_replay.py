"""The embedded default's bundles, as the Android app's README tells a user to push them, replayed through the
Kotlin engine core on this machine's JVM (issue 18).

For shapes-captioner and shapes-clip: the demo's ONNX bundles (fp32 / int8 / int4), LiteRT bundles (fp32 / int8) and
QNN bundles (the captioner's vision encoder a16w8 with an fp16 decoder; CLIP fp16), exported when missing or stale
(older VLM bundles have no app block), then each bundle's golden record replayed by
``dev.pocketvlm.engine.cli.ReplayMainKt``: preprocessing on the same decoded pixels, the prompt ids and positions
from the manifest's app block and the Kotlin tokenizer, the generation loop driven by the record's logits (the
recorded ids and stop reason), the dual encoder's label ids. Model stages need a phone's runtime and are reported as
not run. Writes ``benchmarks/results/android_replay.json`` (machine, tool versions, per bundle and stage).

    python benchmarks/android_replay.py [--cache DIR] [--targets onnx,tflite,qnn] [--models shapes-captioner,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.jvm_harness: the Kotlin build

from benchmarks.shapes_eval import qnn_bundles, say, tflite_bundles  # noqa: E402
from pocketvlm.cli.demo_cmd import default_cache  # noqa: E402
from pocketvlm.demo.run import model_bundles, model_checkpoint  # noqa: E402
from pocketvlm.export.bundle_writer import tool_versions  # noqa: E402
from tests import jvm_harness  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "android_replay.json"
REPLAY = "dev.pocketvlm.engine.cli.ReplayMainKt"
MODELS = ("shapes-captioner", "shapes-clip")


def bundles(cache: Path, name: str, targets: set[str]) -> dict[str, Path]:
    checkpoint = model_checkpoint(cache, name, say)
    found: dict[str, Path] = {}
    if "onnx" in targets:
        onnx, _ = model_bundles(checkpoint, cache, name, say)
        found.update({f"onnx-{q}": path for q, path in onnx.items()})
    if "tflite" in targets:
        found.update({f"tflite-{q}": p for q, p in tflite_bundles(checkpoint, cache, name, {"fp32", "int8"}).items()})
    if "qnn" in targets:
        wanted = {"fp16"} if name == "shapes-clip" else {"a16w8"}
        found.update({f"qnn-{q}": path for q, path in qnn_bundles(checkpoint, cache, name, wanted).items()})
    return found


def java_version() -> str:
    done = subprocess.run(["java", "-version"], capture_output=True, text=True)
    return (done.stderr or done.stdout).splitlines()[0] if done.returncode == 0 else "unknown"


def kotlin_version() -> str:
    path = jvm_harness.KOTLIN / "build.txt"
    return path.read_text().strip() if path.exists() else "unknown"


def replay(build: jvm_harness.EngineBuild, bundle: Path) -> dict[str, Any]:
    started = time.perf_counter()
    done = jvm_harness.run_main(build, REPLAY, str(bundle))
    row: dict[str, Any] = {"bundle": bundle.name, "exit": done.returncode, "seconds": time.perf_counter() - started}
    try:
        row["replay"] = json.loads(done.stdout)
    except ValueError:
        row["error"] = (done.stderr or done.stdout).strip()[-2000:]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--targets", default="onnx,tflite,qnn")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    cache = args.cache or default_cache()
    targets = set(args.targets.split(","))
    found = {name: bundles(cache, name, targets) for name in args.models.split(",")}  # exports first: the long part
    build = jvm_harness.engine_build()
    rows = []
    for name, made in found.items():
        for key, bundle in made.items():
            say(f"replaying {bundle.name} through the Kotlin engine")
            rows.append({"model": name, "variant": key, **replay(build, bundle)})
            status = {s["name"]: s["status"] for s in rows[-1].get("replay", {}).get("stages", [])}
            say(f"  exit {rows[-1]['exit']}: {status or rows[-1].get('error')}")
    result = {"kind": "android_replay", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"platform": platform.platform(), "processor": platform.machine(),
                          "python": platform.python_version(), "java": java_version()},
              "tools": {**tool_versions(), "kotlin": kotlin_version()},
              "what": "golden records replayed by the Kotlin engine core on the JVM: preprocess, prompt, "
                      "generation from the recorded logits, label ids; model stages not run (no phone runtime here)",
              "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    failed = [r["variant"] for r in rows if r["exit"] != 0]
    say(f"wrote {RESULTS}: {len(rows)} bundles, {len(rows) - len(failed)} replayed clean" +
        (f"; failed: {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
