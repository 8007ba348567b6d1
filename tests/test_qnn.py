"""--target qnn and ``pocketvlm npu-check``: every family compiled by Qualcomm's own HTP backend (onnxruntime-qnn's
x86_64 emulator, bit-faithful to the HTP's fp16 arithmetic) for two SoCs, placement per node, and the emulated
outputs against PyTorch. Skipped where the plugin is not installed, except in CI, where it must be."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pocketvlm.cli.main import main
from pocketvlm.export.registry import get_family
from pocketvlm.export.verify.parity import dual_encoder_parity
from pocketvlm.runtime import errors, qnn
from pocketvlm.runtime.manifest import load_bundle
from tests.cases import DUAL_ENCODERS
from tests.qnn_cases import MIN_HTP_SHARE, assert_split_chains, check_contexts, qnn_bundle
from tests.test_vlm import assert_passes


@pytest.mark.parity("qnn")
@pytest.mark.parametrize("family", DUAL_ENCODERS)
def test_dual_encoder_fp16_on_the_htp_matches_pytorch(workspace, photos, family):
    bundle_dir = qnn_bundle(workspace, family)
    bundle = load_bundle(bundle_dir)
    assert {spec.format for spec in bundle.components.values()} == {"qnn_context"}
    for name, record in bundle.manifest["components"].items():
        check_contexts(record, name, MIN_HTP_SHARE)
    subset = {k: photos[k] for k in ("astronaut", "coffee", "camera", "logo")}  # 4 images: the batch-1 loop
    report = dual_encoder_parity(bundle_dir, workspace.checkpoint(family), photos=subset)
    for name, row in report["components"].items():
        assert row["cosine_min"] >= get_family(family).tolerances.limit("min_cosine", "fp16", "qnn", name), (name, row)
    assert report["zero_shot"]["top1_agreement"] == 1.0
    assert set(report["htp"]) == set(bundle.components)  # the parity report's HTP section, from the manifest
    assert_passes(report)


@pytest.fixture(scope="module")
def onnx_clip(workspace):
    return workspace.bundle("clip")


def test_npu_check_reports_dynamic_shapes_then_the_pinned_share(onnx_clip, tmp_path, capsys):
    out = tmp_path / "npu.json"
    assert main(["npu-check", "--bundle", str(onnx_clip), "--soc", "SM8650", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["qairt"] and report["socs"] == ["SM8650"]
    image = report["components"]["image_encoder"]["entries"]["image_encoder"]
    assert image["pinned_dims"] == {"batch": 1}
    row = image["SM8650"]
    assert row["as_exported"]["share"] < 0.2  # dynamic batch: the EP cannot get shapes
    assert "because of dynamic shapes" in row["dynamic_shapes"]
    assert row["pinned"]["share"] == 1.0 and row["pinned"]["context_bytes"] > 0
    assert row["error_vs_cpu"]["image_embeds"]["cosine"] >= 0.999
    text_row = report["components"]["text_encoder"]["entries"]["text_encoder"]["SM8650"]
    for op in text_row["pinned"]["cpu_ops"]:  # whatever stays on CPU is named with the EP's reason
        assert op["reason"] and not op["reason"].startswith("no reason"), op
    assert "because of dynamic shapes" in text and "not phone latency" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--soc", "SM9999"], "unknown SoC SM9999"),
    (["--soc", "SM8650", "--pin", "past=abc"], "--pin entry"),
])
def test_npu_check_bad_input_is_one_line(onnx_clip, capsys, argv, message):
    assert main(["npu-check", "--bundle", str(onnx_clip), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    if "SoC" in message:
        assert "SM8650" in err[0]  # the known ones are listed


def test_backend_crash_is_reported_and_nothing_half_written(onnx_clip, tmp_path, monkeypatch):
    """A segfault of the compiler child is a failed compile naming the signal; the EPContext files it may have
    begun are removed."""
    from pocketvlm.export.npu import probe as probe_module

    context = tmp_path / "image_encoder.SM8650.onnx"

    def crashing(*args, **kwargs):
        context.write_bytes(b"half")
        (tmp_path / "image_encoder.SM8650_qnn.bin").write_bytes(b"half")
        return subprocess.CompletedProcess(args, -11, stdout="", stderr="")

    monkeypatch.setattr(probe_module.subprocess, "run", crashing)
    result = probe_module.probe(onnx_clip / "image_encoder.onnx", qnn.SOCS["SM8650"], {"batch": 1}, context=context)
    assert not result.ok and "crashed" in result.error_lines[0] and "SIGSEGV" in result.error_lines[0]
    assert not list(tmp_path.iterdir())


def test_export_refuses_an_unknown_soc_and_a_missing_plugin(workspace, tmp_path, monkeypatch, capsys):
    ckpt = str(workspace.checkpoint("clip"))
    assert main(["export", "--model", ckpt, "--target", "qnn", "--soc", "SM1234", "--out", str(tmp_path / "a")]) == 2
    assert "unknown SoC SM1234" in capsys.readouterr().err
    assert main(["export", "--model", ckpt, "--target", "qnn", "--quant", "a16w8", "--out", str(tmp_path / "b")]) == 2
    assert "calibration images" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)  # as if not installed: importing it fails
    assert main(["export", "--model", ckpt, "--target", "qnn", "--out", str(tmp_path / "c")]) == 2
    assert "pocketvlm[npu]" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written for a refused request


def test_a_qnn_bundle_without_the_plugin_is_refused_by_name(workspace, monkeypatch):
    bundle_dir = qnn_bundle(workspace, "clip")

    def missing():
        raise errors.NpuError("the Qualcomm NPU path needs onnxruntime-qnn, which is not installed", qnn.EXTRA)

    monkeypatch.setattr(qnn, "plugin", missing)
    from pocketvlm.runtime.dual_encoder import DualEncoder

    with pytest.raises(errors.NpuError, match="onnxruntime-qnn"):
        DualEncoder.load(bundle_dir)


def test_a_qnn_bundle_runs_the_soc_asked_for(workspace, monkeypatch):
    from pocketvlm.runtime.backends import open_session

    bundle = load_bundle(qnn_bundle(workspace, "clip"))
    monkeypatch.setenv(qnn.SOC_ENV, "SM8750")
    session = open_session(bundle, "image_encoder")
    assert "HTP SM8750 v79" in session.backend
    shape = bundle.manifest["components"]["image_encoder"]["static"]["signatures"]["image_encoder"]["pixel_values"]
    out = session.run({"pixel_values": np.zeros((2, *shape[1:]), np.float32)})  # two rows: the batch-1 loop
    assert out["image_embeds"].shape[0] == 2
    monkeypatch.setenv(qnn.SOC_ENV, "SM8550")
    with pytest.raises(errors.BundleError, match="compiled for SM8650, SM8750, not SM8550"):
        open_session(bundle, "image_encoder")


def test_parity_has_the_npu_section(onnx_clip, workspace, tmp_path, capsys):
    out = tmp_path / "parity.json"
    code = main(["parity", "--bundle", str(onnx_clip), "--model", str(workspace.checkpoint("clip")),
                 "--soc", "SM8750", "--json", str(out)])
    assert code == 0
    npu = json.loads(out.read_text())["npu"]
    assert npu["socs"] == ["SM8750"] and set(npu["components"]) == {"image_encoder", "text_encoder"}
    assert "SM8750: as exported" in capsys.readouterr().out


def test_bench_refuses_emulator_timings(workspace, capsys):
    assert main(["bench", "--bundle", str(qnn_bundle(workspace, "clip")), "--runs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTP emulator" in err[0] and "not latency" in err[0]


def test_split_vision_stages_each_on_the_htp_chain_to_the_unsplit_encoder(workspace, photos):
    assert_split_chains(workspace, photos, "clip")


def test_npu_check_reports_each_split_stage(workspace, tmp_path):
    bundle = workspace.bundle("qwen2_vl", split_vision=True)
    out = tmp_path / "npu.json"
    assert main(["npu-check", "--bundle", str(bundle), "--soc", "SM8650", "--component",
                 "vision_frontend,vision_transformer", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["components"]) == {"vision_frontend", "vision_transformer"}
    for name, component in report["components"].items():
        row = component["entries"][name]["SM8650"]
        assert row["pinned"]["share"] >= MIN_HTP_SHARE, (name, row["pinned"]["cpu_ops"])


def test_a16w8_export_is_calibrated_and_close_to_its_qdq_graph(workspace, photos, tmp_path):
    """Static QDQ (a16w8) on both towers, calibrated on images and the default prompts: the manifest records the
    calibration, and the emulated HTP stays within the registry's a16w8 floor of the QDQ graph on CPU."""
    from pocketvlm.export.loop import export_bundle
    from pocketvlm.export.quant.config import QuantConfig

    images = []
    for name, image in photos.items():
        images.append(tmp_path / f"{name}.png")
        image.convert("RGB").save(images[-1])
    out = export_bundle(workspace.checkpoint("clip"), tmp_path / "a16w8", target="qnn",
                        quant=QuantConfig.parse("a16w8"), socs=("SM8650",), calibration_images=tuple(images))
    floor = get_family("clip").tolerances.limit("htp_min_cosine", "a16w8", "qnn")
    for name, record in load_bundle(out).manifest["components"].items():
        assert record["quantization"]["method"] == "a16w8" and record["quantization"]["calibration_feeds"] > 0
        row = record["qnn"]["contexts"]["SM8650"]["entries"][name]
        assert all(e["cosine"] >= floor for e in row["error_vs_qdq_cpu"].values()), row["error_vs_qdq_cpu"]
        assert row["htp_nodes"] / row["total_nodes"] >= MIN_HTP_SHARE, row["cpu_ops"]
