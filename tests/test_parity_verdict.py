"""Parity can fail. export -> parity (exit 0) -> corrupt one weight of one component, re-hash it into the manifest so
the bundle still loads -> parity (exit 1, the failing component named); and the verdict logic against the registry's
thresholds, a hair either side of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pocketvlm.cli.main import main
from pocketvlm.export.registry import get_family
from pocketvlm.export.spec import Tolerances
from pocketvlm.export.verify.verdict import component_checks, verdict
from pocketvlm.export.verify.vlm_parity import vlm_checks
from pocketvlm.runtime.manifest import load_bundle, sha256_file


def corrupt(bundle: Path, out: Path, component: str, scale: float = 1.5) -> str:
    """A copy of ``bundle`` with the largest 2-D weight of ``component`` scaled, re-hashed into manifest.json (the
    component's sha256 and bytes and its ``files`` entry) so that it loads. Returns the initializer's name."""
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["components"][component]
    path = out / entry["file"]
    model = onnx.load(str(path))
    weights = [i for i in model.graph.initializer if len(i.dims) == 2 and i.data_type == onnx.TensorProto.FLOAT]
    weight = max(weights, key=lambda i: int(np.prod(i.dims)))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(scale), weight.name))
    onnx.save(model, str(path))
    entry["sha256"], entry["bytes"] = sha256_file(path), path.stat().st_size
    for listed in manifest["files"]:
        if listed["path"] == entry["file"]:
            listed["sha256"], listed["bytes"] = entry["sha256"], entry["bytes"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    load_bundle(out)  # verifies every sha256: the corruption is in the weights, not in the bookkeeping
    return weight.name


def failing_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.rstrip().endswith("FAIL") or " FAIL  (" in line]


def test_vlm_parity_passes_then_fails_on_a_corrupted_decoder_or_vision_weight(workspace, tmp_path, capsys):
    bundle, checkpoint = workspace.bundle("qwen2_vl", "fp32", "varied"), workspace.checkpoint("qwen2_vl", "varied")
    report_path = tmp_path / "parity.json"
    capsys.readouterr()
    assert main(["parity", "--bundle", str(bundle), "--model", str(checkpoint), "--json", str(report_path)]) == 0
    out = capsys.readouterr().out
    assert "parity: PASS" in out and not failing_lines(out), out
    report = json.loads(report_path.read_text())
    assert report["pass"] is True and all(line["pass"] for line in report["checks"])
    assert {line["component"] for line in report["checks"]} == {"vision_encoder", "text_decoder", "end_to_end"}

    for component in ("text_decoder", "vision_encoder"):
        broken = tmp_path / f"broken-{component}"
        corrupt(bundle, broken, component)
        assert main(["parity", "--bundle", str(broken), "--model", str(checkpoint), "--json",
                     str(report_path)]) == 1
        out = capsys.readouterr().out
        failed = failing_lines(out)
        assert failed and failed[0].startswith(component), out
        assert "parity: FAIL" in out
        report = json.loads(report_path.read_text())
        assert report["pass"] is False
        verdicts = {line["component"]: line["pass"] for line in report["checks"]
                    if line["component"] != "end_to_end"}
        # the decoder is judged on HF's image features: a broken vision tower fails the vision line alone
        assert verdicts == {"vision_encoder": component != "vision_encoder",
                            "text_decoder": component != "text_decoder"}, report["checks"]


def test_dual_encoder_parity_fails_on_a_corrupted_image_tower(workspace, tmp_path, capsys):
    bundle, checkpoint = workspace.bundle("clip", "fp32"), workspace.checkpoint("clip")
    capsys.readouterr()
    assert main(["parity", "--bundle", str(bundle), "--model", str(checkpoint)]) == 0
    assert "parity: PASS" in capsys.readouterr().out
    corrupt(bundle, tmp_path / "broken", "image_encoder")
    report_path = tmp_path / "parity.json"
    assert main(["parity", "--bundle", str(tmp_path / "broken"), "--model", str(checkpoint), "--json",
                 str(report_path)]) == 1
    out = capsys.readouterr().out
    assert failing_lines(out) and all(line.startswith(("image_encoder", "end_to_end")) for line in failing_lines(out))
    report = json.loads(report_path.read_text())
    assert not report["components"]["image_encoder"]["pass"] and report["components"]["text_encoder"]["pass"]


def test_tolerance_lookup():
    tolerances = Tolerances(min_cosine={"int8": 0.99, "int4": 0.98, "coreml/int4": 0.95},
                            component_min_cosine={"text_encoder": {"int4": 0.9}}, max_abs={"fp32": 1e-4})
    assert tolerances.limit("min_cosine", "int4", "onnx") == 0.98
    assert tolerances.limit("min_cosine", "int4", "coreml") == 0.95
    assert tolerances.limit("min_cosine", "palette4", "coreml") == 0.95  # 4-bit tables: the 4-bit thresholds
    assert tolerances.limit("min_cosine", "int4", "onnx", "text_encoder") == 0.9
    assert tolerances.limit("min_cosine", "int8", "onnx", "text_encoder") == 0.99
    assert tolerances.limit("max_abs", "int8") is None  # not judged
    with pytest.raises(Exception, match="no tolerance table"):
        tolerances.limit("cosine", "int8")


def photo_row(vision_cos: float, logits_cos: float, top1: float = 1.0, divergence: int | None = None,
              margin: float = 0.0, error: float = 0.01) -> dict:
    steps = 8
    logits = {"cosine_min": logits_cos, "worst_step": 0, "per_step_max_abs": [error] * steps}
    return {"photo": "p", "compared_steps": steps,
            "vision_encoder": {"cosine_min": vision_cos, "max_abs": 0.0, "reference_max_abs": 1.0},
            "decoder_logits": dict(logits), "logits": logits, "teacher_forced_top1_agreement": top1,
            "greedy": {"first_divergence": divergence, "agreement": 1.0 if divergence is None else divergence / steps,
                       "reference_margin_at_divergence": None if divergence is None else margin}}


@pytest.mark.parametrize(("target", "method"), [("onnx", "fp32"), ("onnx", "int4"), ("coreml", "fp16"),
                                                 ("coreml", "int4")])
def test_vlm_verdict_a_hair_either_side_of_the_registered_thresholds(target, method):
    tolerances = get_family("qwen2_vl").tolerances
    methods = {"vision_encoder": method, "text_decoder": method}
    vision = tolerances.limit("min_cosine", method, target, "vision_encoder")
    logits = tolerances.limit("logits_min_cosine", method, target)
    top1 = tolerances.limit("min_top1_agreement", method, target)

    def judged(**row: float) -> dict:
        return verdict(vlm_checks([photo_row(**row)], tolerances, methods, target))

    assert judged(vision_cos=vision, logits_cos=logits, top1=top1)["pass"]
    assert judged(vision_cos=vision + 1e-9, logits_cos=logits + 1e-9)["pass"]
    assert judged(vision_cos=vision - 1e-9, logits_cos=logits)["failed"] == ["vision_encoder: output cosine, worst row"]
    failed = judged(vision_cos=vision, logits_cos=logits - 1e-9)["failed"]
    assert failed == ["text_decoder: logits cosine, worst step (HF vision in)", "end_to_end: logits cosine, worst step"]
    assert judged(vision_cos=vision, logits_cos=logits, top1=top1 - 1e-9)["failed"] == [
        "end_to_end: teacher-forced top-1 agreement"]
    assert not judged(vision_cos=float("nan"), logits_cos=logits)["pass"]
    factor = tolerances.limit("near_tie_factor", method, target)
    if factor is None:  # fp32: greedy tokens must equal the reference's
        assert judged(vision_cos=vision, logits_cos=logits, divergence=5, margin=0.0)["failed"] == [
            "end_to_end: greedy tokens equal, share of steps"]
    else:  # a divergence passes on a near-tie only, and not before the registered step
        step = int(tolerances.limit("min_divergence_step", method, target) or 0)
        inside = dict(vision_cos=vision, logits_cos=logits, divergence=step, error=0.01)
        assert judged(**inside, margin=factor * 0.01 * (1 - 1e-6))["pass"]
        assert judged(**inside, margin=factor * 0.01 * (1 + 1e-6))["failed"] == [
            "end_to_end: greedy divergence: ref top-2 margin"]
        if step:
            assert "end_to_end: greedy first divergence step" in judged(**{**inside, "divergence": step - 1})["failed"]


def test_dual_encoder_component_verdict_a_hair_either_side():
    tolerances = get_family("clip").tolerances
    limit = tolerances.limit("min_cosine", "int4", "onnx", "text_encoder")
    row = {"cosine_min": limit, "max_abs": 0.5, "reference_max_abs": 1.0}
    assert verdict(component_checks(tolerances, "text_encoder", "int4", "onnx", row))["pass"]
    assert not verdict(component_checks(tolerances, "text_encoder", "int4", "onnx",
                                        {**row, "cosine_min": limit - 1e-9}))["pass"]
    fp16 = {"cosine_min": 1.0, "max_abs": tolerances.limit("max_abs_relative", "fp16", "coreml") * 4.0,
            "reference_max_abs": 4.0}
    assert verdict(component_checks(tolerances, "image_encoder", "fp16", "coreml", fp16))["pass"]
    fp16["max_abs"] *= 1 + 1e-6
    assert verdict(component_checks(tolerances, "image_encoder", "fp16", "coreml", fp16))["failed"] == [
        "image_encoder: output max abs error / reference max"]
    assert not verdict([])["pass"]  # nothing judged is not a pass
