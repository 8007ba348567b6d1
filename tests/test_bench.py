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


@pytest.fixture(scope="module")
def host_result(workspace, tmp_path_factory) -> dict:
    """A real `pocketvlm bench --json` result of a tiny Qwen2-VL bundle, measured here (no bandwidth run)."""
    out = tmp_path_factory.mktemp("device") / "host.json"
    assert main(["bench", "--bundle", str(workspace.bundle("qwen2_vl", "int8", "varied")), "--runs", "2",
                 "--warmup", "1", "--new-tokens", "4", "--threads", "1", "--no-bandwidth", "--json", str(out)]) == 0
    return json.loads(out.read_text())


CHROME_ANDROID = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/126.0.6478.122 Mobile Safari/537.36")


def as_device(result: dict) -> dict:
    """``result`` as the web demo would write it: the same figures, measured_on device and its device block."""
    device = json.loads(json.dumps(result))
    device["measured_on"] = "device"
    device["device"] = {"user_agent": CHROME_ANDROID, "backend": "wasm", "threads": 4, "cross_origin_isolated": True,
                        "memory_source": "measureUserAgentSpecificMemory", "app": "pocketvlm web-demo 0.1.0",
                        "figures": {"preprocess_ms": 3.5, "download_ms": 120.0, "load_ms": 80.0}}
    device["figures"].update(preprocess_ms=3.5, bundle_download_ms=120.0, session_load_ms=80.0)
    device["threads"], device["peak_rss_bytes"] = 4, 123_000_000
    return device


def test_a_device_result_validates_and_needs_its_device_block(host_result):
    jsonschema.validate(host_result, SCHEMA)
    jsonschema.validate(dict(host_result, measured_on="host"), SCHEMA)
    device = as_device(host_result)
    jsonschema.validate(device, SCHEMA)
    # a browser with no memory figure says so
    jsonschema.validate(dict(device, peak_rss_bytes=None, device=dict(device["device"], memory_source="unavailable",
                                                                        threads=None, cross_origin_isolated=None)),
                        SCHEMA)
    no_block = {key: value for key, value in device.items() if key != "device"}
    unlabelled = {key: value for key, value in device.items() if key != "measured_on"}
    incomplete = dict(device, device={k: v for k, v in device["device"].items() if k != "memory_source"})
    for bad in (no_block, unlabelled, incomplete, dict(device, measured_on="phone"),
                dict(host_result, peak_rss_bytes=None),
                dict(device, device=dict(device["device"], figures={"load_ms": -1})),
                dict(device, figures=dict(device["figures"], session_load_ms="80"))):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


def test_report_keeps_device_rows_apart(host_result, tmp_path):
    """A device file gets its own 'Measured on devices' table: not in the host latency or roofline tables, not in
    the phone projection (still labelled as one)."""
    import runpy
    from pathlib import Path

    results, extra = tmp_path / "results", tmp_path / "extra"
    results.mkdir()
    extra.mkdir()
    host = dict(host_result, roofline={"bytes_per_token": 4_000_000, "bandwidth_gbs": 10.0,
                                       "roofline_tokens_per_s": 2500.0, "fraction_of_roofline": 0.01})
    (results / "host.json").write_text(json.dumps(host))
    device = as_device(host_result)
    device["device"]["model"] = "Pixel 8 | Pro"  # machine-written text with a pipe stays in its cell
    (results / "web-pixel8.json").write_text(json.dumps(device))
    report = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "report.py"))
    out = tmp_path / "report"
    report["main"](["--results", str(results), "--extra", str(extra), "--out", str(out)])
    text = (out / "report.md").read_text()
    hosts, _, devices = text.partition("## Measured on devices")
    assert devices, text
    name = Path(host_result["bundle"]["path"]).name
    figures = device["figures"]
    row = (f"| Pixel 8 / Pro, Android 14, Chrome 126 | wasm | 4 | {name} (int8) | {figures['image_encode_ms']:.1f} | "
           f"{figures['time_to_first_token_ms']:.1f} | {figures['prefill_tokens_per_s']:.1f} | "
           f"{figures['decode_tokens_per_s']:.1f} | 123 | measureUserAgentSpecificMemory |")
    assert row in devices.splitlines(), devices
    assert "Device result files: web-pixel8.json" in devices and "host.json" not in devices
    # the host side: one row per component and one projection row, from host.json only
    assert hosts.count("| text_decoder_prefill |") == 1 and hosts.count("| vision_encoder |") == 1
    assert "Phone projection (a projection, not a measurement)" in hosts and hosts.count("| 76.8 |") == 1
    assert "Result files: host.json" in hosts and "web-pixel8.json" not in hosts
    assert "<h2>Measured on devices</h2>" in (out / "report.html").read_text()
    iphone = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
              "Version/17.5 Mobile/15E148 Safari/604.1")
    assert report["short_agent"]({"user_agent": iphone}) == "iOS 17.5, Safari 17.5"
    assert report["short_agent"]({"user_agent": "pocketvlm-android/0.1", "os": "Android 15"}) == "Android 15"
    # only device files: the device table alone, no host plots
    (results / "host.json").unlink()
    only = tmp_path / "only"
    report["main"](["--results", str(results), "--extra", str(extra), "--out", str(only)])
    text = (only / "report.md").read_text()
    assert "## Measured on devices" in text and "## Latency per component" not in text
    assert not (only / "latency.png").exists()


def test_report_npu_section_beside_the_published_tables(tmp_path):
    """The committed npu_coverage_*.json files (benchmarks/npu_coverage.py) appear in the report's NPU section, the
    HTP compiler's verdict beside the published-table columns of the same model's LiteRT bundle, with the
    disagreement said in words."""
    import runpy
    import shutil
    from pathlib import Path

    results = Path(__file__).parents[1] / "benchmarks" / "results"
    coverage = sorted(results.glob("npu_coverage_*.json"))
    assert coverage, "benchmarks/results should hold the committed NPU coverage files"
    for path in [*coverage, *results.glob("delegates_*.json")]:
        shutil.copy(path, tmp_path / path.name)
    lines = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "npu_report.py"))["npu_markdown"](tmp_path)
    text = "\n".join(lines)
    assert "## NPU coverage: Qualcomm HTP compiler (QAIRT" in text
    for path in coverage:
        report = json.loads(path.read_text())["npu_check"]
        for component, data in report["components"].items():
            row = data["entries"][component][report["socs"][0]]
            assert f"{row['pinned']['share'] * 100:.1f}% ({row['pinned']['htp_nodes']}/" in text
    if (tmp_path / "npu_coverage_qwen2_vl_2b.json").exists() and list(tmp_path.glob("delegates_qwen2_vl_2b_*.json")):
        assert "disagree" in text and "GPU / NNAPI" in text
    assert runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "npu_report.py"))["npu_markdown"](
        tmp_path / "nothing") == []
