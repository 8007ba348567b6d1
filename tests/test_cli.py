"""The CLI's happy paths: export -> classify / embed -> parity, as a user runs them."""

from __future__ import annotations

import json

import numpy as np

from pocketvlm.cli.main import main


def test_export_classify_embed_parity(tmp_path, capsys, workspace, photos):
    model = workspace.checkpoint("clip")
    out = tmp_path / "bundle"
    capsys.readouterr()
    assert main(["export", "--model", str(model), "--out", str(out), "--quant", "int8"]) == 0
    assert "exported clip" in capsys.readouterr().out

    image = tmp_path / "coffee.jpg"
    photos["coffee"].save(image)
    assert main(["classify", "--bundle", str(out), "--image", str(image), "--labels", "coffee, a cat ,a dog",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {p["label"] for p in result[0]["predictions"]} == {"coffee", "a cat", "a dog"}
    assert abs(sum(p["score"] for p in result[0]["predictions"]) - 1) < 1e-5

    assert main(["classify", "--bundle", str(out), "--image", str(image), "--labels", "a,b", "--top", "1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2

    npy = tmp_path / "e.npy"
    assert main(["embed", "--bundle", str(out), "--image", str(image), "--image", str(image), "--out", str(npy)]) == 0
    vectors = np.load(npy)
    assert vectors.shape[0] == 2 and np.allclose(np.linalg.norm(vectors, axis=-1), 1, atol=1e-5)
    capsys.readouterr()
    assert main(["embed", "--bundle", str(out), "--text", "a cat"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["embedding"]) == vectors.shape[1]

    report_path = tmp_path / "parity.json"
    assert main(["parity", "--bundle", str(out), "--model", str(model), "--json", str(report_path)]) == 0
    table = capsys.readouterr().out
    assert "image_encoder" in table and "zero-shot top-1 agreement" in table
    report = json.loads(report_path.read_text())
    assert report["components"]["image_encoder"]["quantization"] == "int8"
    assert report["pass"] is True


def test_export_replaces_an_existing_bundle(tmp_path, capsys, workspace):
    model = str(workspace.checkpoint("siglip"))
    out = str(tmp_path / "b")
    assert main(["export", "--model", model, "--out", out, "--quant", "fp32"]) == 0
    assert main(["export", "--model", model, "--out", out, "--quant", "fp16"]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["components"]["image_encoder"]["quantization"]["method"] == "fp16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
