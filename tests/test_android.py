"""The android-demo's engine core on this machine's JVM, against the Python runtime (issue 18).

The Python side writes the fixtures (tokenizer cases on the real SmolLM2 and CLIP vocabularies, preprocessing on the
same decoded pixels, decoder and sampler scenarios, and bundles with their golden records), the Kotlin engine core
and its JUnit tests are compiled with JetBrains' kotlinc and run once by the JUnit console launcher; each test here
asserts one part's Kotlin tests ran and passed (a part whose tests did not run fails: nothing is skipped). The ORT
backend is compiled against ONNX Runtime Android's classes (type-checked, not run: no Android here).
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from pocketvlm.export.static_shapes import StaticShapes
from tests import jvm_harness
from tests.jvm_fixtures import generation, golden, preprocess, tokenizer

REPLAY = "dev.pocketvlm.engine.cli.ReplayMainKt"
# the bundles whose golden records replay through the Kotlin engine: a static Qwen2-VL (M-RoPE, LiteRT signatures,
# vision feeds) and a dual encoder; the embedded default's bundles replay in tests/test_shapes.py
SHAPES = StaticShapes(prefill_length=16, kv_capacity=256, image_size=112)


@pytest.fixture(scope="module")
def jvm(workspace, tmp_path_factory):
    """Fixtures written, the engine compiled, its JUnit tests run once: (report, build, bundles, fixtures)."""
    fixtures = tmp_path_factory.mktemp("jvm-fixtures")
    bundles = {"qwen2_vl-tflite": workspace.bundle("qwen2_vl", "fp32", "varied", target="tflite", shapes=SHAPES),
               "clip-onnx": workspace.bundle("clip")}
    tokenizer.write(fixtures)
    preprocess.write(fixtures)
    generation.write(fixtures)
    golden.write(fixtures, bundles)
    build = jvm_harness.engine_build()
    report = jvm_harness.run_junit(build, fixtures, tmp_path_factory.mktemp("junit"))
    return report, build, bundles, fixtures


def ran(report: jvm_harness.JUnitReport, test_class: str, at_least: int) -> list[str]:
    prefix = f"dev.pocketvlm.engine.{test_class}."
    mine = [name for name in report.passed if name.startswith(prefix)]
    failed = {k: v for k, v in report.failed.items() if k.startswith(prefix)}
    skipped = [name for name in report.skipped if name.startswith(prefix)]
    assert not failed, failed
    assert not skipped, skipped
    assert len(mine) >= at_least, f"{test_class}: {len(mine)} Kotlin tests passed, expected {at_least}+\n" \
                                  f"{report.output[-3000:]}"
    return mine


@pytest.mark.parametrize(("test_class", "at_least"), [
    ("JsonTest", 4), ("TokenizerTest", 3), ("PreprocessTest", 3), ("ResampleTest", 1), ("GenerationTest", 3),
    ("DecoderTest", 3), ("PromptTest", 2), ("ZeroShotTest", 1), ("BundleTest", 3), ("GoldenTest", 2),
    ("ResultTest", 1), ("RowLoopTest", 3), ("PipelinesTest", 6)])
def test_kotlin_engine_tests_pass(jvm, test_class, at_least):
    report = jvm[0]
    ran(report, test_class, at_least)


def test_no_kotlin_test_failed_outside_the_listed_classes(jvm):
    report = jvm[0]
    assert not report.failed, report.failed
    assert len(report.passed) >= 30, report.output[-3000:]


@pytest.mark.parametrize("name", ["qwen2_vl-tflite", "clip-onnx"])
def test_golden_record_replays_through_the_kotlin_engine(jvm, name):
    _, build, bundles, _ = jvm
    done = jvm_harness.run_main(build, REPLAY, str(bundles[name]))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    stages = {stage["name"]: stage for stage in result["stages"]}
    assert stages["preprocess"]["status"] == "passed", stages["preprocess"]
    if name.startswith("clip"):
        assert stages["text"]["status"] == "passed", stages["text"]
    else:
        assert stages["prompt"]["status"] == "passed", stages["prompt"]
        assert stages["generation"]["status"] == "passed", stages["generation"]
    # model stages cannot run on this JVM (no ONNX Runtime / LiteRT here): reported as not run, never as passed
    assert all(s["status"] in ("passed", "not_run") for s in stages.values()), stages


def test_replay_refuses_a_broken_bundle_with_one_line(jvm, tmp_path):
    build = jvm[1]
    (tmp_path / "manifest.json").write_text('{"schema_version": 1, "family": "clip"', encoding="utf-8")
    done = jvm_harness.run_main(build, REPLAY, str(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_ort_backend_compiles_against_onnxruntime_android():
    jar = jvm_harness.compile_ort_backend()
    assert jar.stat().st_size > 1000


def test_the_app_model_code_compiles_against_the_engine_core():
    """The app's platform-free model/ (loaded bundle, model thread, benchmark runs) type-checks against the engine
    core alone, with no android.* import (its Android code cannot compile here)."""
    jar = jvm_harness.compile_app_model()
    assert jar.stat().st_size > 1000


def test_the_device_result_file_the_kotlin_code_writes_validates_and_reports(jvm):
    """ResultTest.kt wrote device result files from the engine's own measurements: they validate against the bench
    schema and benchmarks/report.py shows each as a measured device row."""
    from pocketvlm.runtime.manifest import SCHEMA_PATH

    schema = json.loads((SCHEMA_PATH.parent / "bench.schema.json").read_text())
    written = golden.result_files(jvm[3])
    assert written, "the Kotlin ResultTest wrote no result file"
    for path in written:
        result = json.loads(path.read_text())
        jsonschema.validate(result, schema)
        assert result["measured_on"] == "device"
    rows = golden.device_rows(written)
    assert len(rows) == len(written), rows
