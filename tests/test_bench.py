"""``pocketvlm bench``: result files in the repo's schema, with provenance, for both kinds of bundle."""

from __future__ import annotations

import json
from importlib import metadata as importlib_metadata

import jsonschema
import pytest

from pocketvlm.cli.main import main
from pocketvlm.runtime.bench import SCHEMA_PATH, memory_bandwidth, roofline

SCHEMA = json.loads(SCHEMA_PATH.read_text())


@pytest.mark.parametrize(("family", "size", "expected"), [
    ("clip", "tiny", {"image_encoder", "text_encoder"}),
    ("qwen2_vl", "varied", {"vision_encoder", "text_decoder_prefill"}),
])
def test_bench_writes_a_schema_valid_result(workspace, photos, tmp_path, capsys, family, size, expected):
    bundle = workspace.bundle(family, "int8", size)
    image = tmp_path / "in.png"
    photos["coffee"].resize((120, 90)).save(image)
    out = tmp_path / "r.json"
    assert main(["bench", "--bundle", str(bundle), "--image", str(image), "--runs", "3", "--warmup", "1",
                 "--new-tokens", "6", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    jsonschema.validate(result, SCHEMA)
    assert set(result["figures"]["components"]) == expected
    assert result["bundle"]["quantization"] and result["bundle"]["bytes"] > 0 and result["threads"] == 1
    assert "onnxruntime" in result["tools"] and result["machine"]["logical_cpus"] >= 1
    # what ran, as the sessions describe themselves
    assert result["engine"].startswith("onnxruntime ") and result["engine"].endswith(" CPUExecutionProvider")
    assert set(result["engines"]) == ({"image_encoder", "text_encoder"} if family == "clip"
                                      else {"vision_encoder", "text_decoder"})
    if family == "qwen2_vl":
        figures = result["figures"]
        assert figures["new_tokens"] == 6 and figures["decode_tokens_per_s"] > 0
        assert result["roofline"]["fraction_of_roofline"] > 0
        assert "tokens/s" in capsys.readouterr().out


def test_bench_records_the_litert_backend(workspace, photos):
    from pocketvlm.runtime.bench import run_bench
    from tests.test_tflite import tflite_bundle

    result = run_bench(tflite_bundle(workspace, "clip"), photos["coffee"], runs=1, warmup=0, threads=1,
                       bandwidth=False)
    jsonschema.validate(result, SCHEMA)
    litert = importlib_metadata.version("ai-edge-litert")
    assert result["engine"] == f"ai-edge-litert {litert} XNNPACK (CPU)", result["engine"]
    assert result["engines"] == {"image_encoder": result["engine"], "text_encoder": result["engine"]}


def test_roofline_arithmetic():
    figures = {"decode_tokens_per_s": 10.0, "bytes_per_decode_token": {"weights": 900, "kv_cache_at_mean_context": 100}}
    roof = roofline(figures, {"copy_gbs": 1e-6, "add_gbs": 2e-6})
    assert roof["roofline_tokens_per_s"] == pytest.approx(2.0) and roof["fraction_of_roofline"] == pytest.approx(5.0)
    measured = memory_bandwidth(megabytes=16, repeats=2, threads=1)
    assert measured["copy_gbs"] > 0.1 and measured["add_gbs"] > 0.1


def test_bench_bad_arguments(workspace, tmp_path, capsys):
    assert main(["bench", "--bundle", str(workspace.bundle("clip")), "--runs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--runs" in err[0]
    assert main(["bench", "--bundle", str(tmp_path / "missing")]) == 2


def test_report_from_result_files(workspace, photos, tmp_path):
    """benchmarks/report.py turns bench files into Markdown, HTML and PNG plots (latency; decode vs roofline, with
    the phone projection labelled as one), plus the decode-peers run (here benchmarks/decode_peers.py itself, on a
    tiny Qwen2-VL: pocketvlm against PyTorch eager) and the committed full-size export results."""
    import runpy
    import shutil
    from pathlib import Path

    from PIL import Image

    benchmarks = Path(__file__).parents[1] / "benchmarks"
    results, extra = tmp_path / "results", tmp_path / "extra"
    results.mkdir()
    (results / "not-a-bench.json").write_text('{"kind": "something else"}')
    for family, size in (("clip", "tiny"), ("qwen2_vl", "varied")):
        assert main(["bench", "--bundle", str(workspace.bundle(family, "int8", size)), "--runs", "2", "--warmup", "1",
                     "--new-tokens", "4", "--threads", "1", "--json", str(results / f"{family}.json")]) == 0
    runpy.run_path(str(benchmarks / "decode_peers.py"))["main"](
        ["--checkpoint", str(workspace.checkpoint("qwen2_vl", "varied")),
         "--bundle", str(workspace.bundle("qwen2_vl", "fp32", "varied")), "--engines", "pocketvlm,torch",
         "--prompt-tokens", "8", "--new-tokens", "6", "--runs", "1", "--threads", "1", "--out", str(extra)])
    peers = json.loads(next(extra.glob("decode_peers_*.json")).read_text())
    engines = peers["engines"]
    # the same fp32 weights, prompt and greedy decoding: the same tokens
    assert engines["pocketvlm"]["tokens"] == engines["torch"]["tokens"] and len(engines["torch"]["tokens"]) == 6
    assert all(e["decode_tokens_per_s"] > 0 and e["fraction_of_roofline"] > 0 for e in engines.values())
    full_size = sorted((benchmarks / "results").glob("full_size_export_*.json"))
    for path in full_size:
        shutil.copy(path, extra / path.name)
    report = runpy.run_path(str(benchmarks / "report.py"))
    out = tmp_path / "report"
    report["main"](["--results", str(results), "--extra", str(extra), "--out", str(out)])
    text = (out / "report.md").read_text()
    assert f"{workspace.bundle('clip', 'int8').name} (int8)" in text and "| text_decoder_prefill |" in text
    assert "Phone projection (a projection, not a measurement)" in text and "| 76.8 |" in text
    assert "clip.json, qwen2_vl.json" in text
    assert "## Decode peers, one run" in text and "| PyTorch eager fp32 |" in text
    assert ("## Full-size exports" in text) == bool(full_size)
    page = (out / "report.html").read_text()
    assert page.count("<table>") == 6 + bool(full_size) and '<img alt="latency" src="latency.png">' in page
    for plot in ("latency.png", "decode_roofline.png", "decode_peers.png"):
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and image.width == 900 and image.height > 100
    with pytest.raises(SystemExit, match="no bundle_bench result files"):
        report["main"](["--results", str(tmp_path), "--out", str(out)])
