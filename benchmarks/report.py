"""Benchmark report: Markdown + HTML + PNG plots generated from ``pocketvlm bench`` result files.

    python benchmarks/report.py [--results benchmarks/results/bench] [--out benchmarks/results/report]

Reads every ``bundle_bench`` JSON file in ``--results`` (written by ``pocketvlm bench --json``), plus the
``decode_peers_*.json`` (``benchmarks/decode_peers.py``), ``full_size_export_*.json``
(``benchmarks/full_size_export.py``) and ``web_demo_speed*.json`` (``benchmarks/web_demo.py``) files in
``--extra``, and writes ``report.md``, ``report.html`` and the plots (``latency.png``, ``decode_roofline.png``,
``decode_peers.png``) into ``--out``:
- latency per component (median, p90 in the table) by bundle and quantization;
- decode tokens/s against the decode roofline of the machine the file came from (its measured bandwidth / the bytes
  read per token);
- decode peers measured in one run (pocketvlm, onnxruntime-genai, PyTorch eager) and full-size export time, peak
  memory and bundle bytes per parameter;
- a phone projection: the same bytes per token at published phone memory bandwidths, labelled as a projection,
  beside published phone figures (``PUBLISHED``, each with its source);
- "Measured on devices": result files a demo app wrote on the device itself (``measured_on: device``, with its
  ``device`` block), in their own table, apart from the host rows above and from the projection.
Plots are drawn with Pillow (a runtime dependency already), so the report needs nothing else installed.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

RESULTS = Path(__file__).parent / "results"
# (device, memory, GB/s, source): projection inputs, never results
PHONES = (("Snapdragon 8 Gen 3 (Galaxy S24, OnePlus 12)", "LPDDR5X-4800", 76.8, "runlocalai.co device listing"),)
# (what, figure, source): published phone figures to stand beside the projection
PUBLISHED = (
    ("Qwen3-0.6B 8da4w decode, Galaxy S22 (ExecuTorch)", "59.2 tok/s", "huggingface/optimum-executorch README"),
    ("Qwen3-1.7B decode, SM8750 CPU (MNN)", "34.8 tok/s", "alibaba/MNN issue #4378"),
    ("LLaVA-1.5-7B 4-bit decode, OnePlus 12 (ExecuTorch XNNPACK)", "8.92 tok/s",
     "pytorch/executorch examples/models/llava/README.md"),
    ("CLIP ViT-B/16 image+text, Galaxy S24 (ONNX)", "15.3 ms", "quic/ai-hub-models openai_clip perf.yaml"),
)
COLOURS = ((52, 101, 164), (245, 121, 0), (115, 210, 22), (204, 0, 0), (117, 80, 123), (193, 125, 17))


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every bundle_bench file in ``folder``, sorted by bundle name; anything else there is skipped."""
    results = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("kind") == "bundle_bench":
            data["_file"] = path.name
            results.append(data)
    if not results:
        raise SystemExit(f"no bundle_bench result files in {folder}: run `pocketvlm bench --bundle DIR --json "
                         f"{folder}/NAME.json` first")
    return sorted(results, key=lambda r: label(r))


def on_device(result: dict[str, Any]) -> bool:
    return result.get("measured_on") == "device"


def label(result: dict[str, Any]) -> str:
    """The bundle directory's name and its quantization methods, e.g. ``shapes-captioner-int4 (int4)``."""
    bundle = result["bundle"]
    methods = "/".join(dict.fromkeys(bundle["quantization"].values()))
    return f"{Path(bundle['path']).name} ({methods})"


def bar_chart(groups: list[tuple[str, list[tuple[str, float]]]], title: str, unit: str, path: Path) -> None:
    """Horizontal grouped bars: one group per row label, one bar per series, each bar labelled with its value."""
    series = list(dict.fromkeys(name for _, bars in groups for name, _ in bars))
    top = max((value for _, bars in groups for _, value in bars), default=1.0) or 1.0
    bar_h, gap, left, width = 18, 14, 300, 900
    height = 60 + sum(len(bars) * bar_h + gap for _, bars in groups) + 30 + 20 * len(series)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), f"{title} ({unit})", fill="black")
    y = 40
    scale = (width - left - 120) / top
    for name, bars in groups:
        draw.text((10, y + 2), name[:48], fill="black")
        for series_name, value in bars:
            colour = COLOURS[series.index(series_name) % len(COLOURS)]
            draw.rectangle([left, y, left + max(value * scale, 1), y + bar_h - 3], fill=colour)
            draw.text((left + value * scale + 6, y + 2), f"{value:.3g}", fill="black")
            y += bar_h
        y += gap
    for i, series_name in enumerate(series):
        draw.rectangle([10, y + 20 * i + 4, 24, y + 20 * i + 16], fill=COLOURS[i % len(COLOURS)])
        draw.text((32, y + 20 * i + 4), series_name, fill="black")
    image.save(path)


def latency_groups(results: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, float]]]]:
    return [(label(r), [(name, stats["median_ms"]) for name, stats in r["figures"]["components"].items()])
            for r in results]


def roofline_groups(results: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, float]]]]:
    return [(label(r), [("measured decode", r["figures"]["decode_tokens_per_s"]),
                        ("roofline (bandwidth / bytes per token)", r["roofline"]["roofline_tokens_per_s"])])
            for r in results if "roofline" in r]


def markdown(results: list[dict[str, Any]]) -> str:
    host = [r for r in results if not on_device(r)]
    lines = ["# pocketvlm benchmark report", ""]
    if host:
        lines += host_markdown(host)
    devices = [r for r in results if on_device(r)]
    if devices:
        lines += device_markdown(devices)
    return "\n".join(lines) + "\n"


def host_markdown(results: list[dict[str, Any]]) -> list[str]:
    first = results[0]
    lines = [f"Machine: {first['machine'].get('cpu', first['machine'].get('processor', '?'))}, "
             f"{first['threads']} threads; tools: " + ", ".join(f"{k} {v}" for k, v in first["tools"].items()), "",
             "## Latency per component", "", "| bundle | component | median ms | p90 ms | bundle MB | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        for name, stats in r["figures"]["components"].items():
            lines.append(f"| {label(r)} | {name} | {stats['median_ms']:.2f} | {stats['p90_ms']:.2f} | "
                         f"{r['bundle'].get('bytes', 0) / 1e6:.1f} | {r['peak_rss_bytes'] / 1e6:.0f} |")
    lines += ["", "![latency](latency.png)", ""]
    vlms = [r for r in results if "roofline" in r]
    if vlms:
        lines += ["## Decode against the memory-bandwidth roofline", "",
                  "| bundle | TTFT ms | prefill tok/s | decode tok/s | roofline tok/s | fraction | bytes/token MB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in vlms:
            f, roof = r["figures"], r["roofline"]
            lines.append(f"| {label(r)} | {f['time_to_first_token_ms']:.1f} | {f['prefill_tokens_per_s']:.1f} | "
                         f"{f['decode_tokens_per_s']:.1f} | {roof['roofline_tokens_per_s']:.1f} | "
                         f"{roof['fraction_of_roofline'] * 100:.0f}% | {roof['bytes_per_token'] / 1e6:.1f} |")
        lines += ["", "![decode vs roofline](decode_roofline.png)", "",
                  "## Phone projection (a projection, not a measurement)", "",
                  "The same bytes per decode token at a phone's published memory bandwidth, at the fraction of "
                  "roofline measured here. Phones share that bandwidth with everything else, so treat it as an "
                  "upper bound.", "", "| bundle | phone | GB/s | roofline tok/s | at measured fraction | source |",
                  "|---|---|---:|---:|---:|---|"]
        for r in vlms:
            for phone, memory, gbs, source in PHONES:
                limit = gbs * 1e9 / r["roofline"]["bytes_per_token"]
                lines.append(f"| {label(r)} | {phone}, {memory} | {gbs:.1f} | {limit:.0f} | "
                             f"{limit * r['roofline']['fraction_of_roofline']:.0f} | {source} |")
        lines += ["", "Published phone figures (other models, other tools; for scale only):", "",
                  "| what | figure | source |", "|---|---|---|"]
        lines += [f"| {what} | {figure} | {source} |" for what, figure, source in PUBLISHED]
    lines += ["", "Result files: " + ", ".join(r["_file"] for r in results), ""]
    return lines


# (name, pattern): the first that matches a user agent names its browser (Edge and Samsung's say Chrome too)
BROWSERS = (("Edge", r"Edg(?:A|iOS)?/(\d+)"), ("Samsung Internet", r"SamsungBrowser/(\d+)"),
            ("Firefox", r"(?:Firefox|FxiOS)/(\d+)"), ("Chrome", r"(?:Chrome|CriOS)/(\d+)"),
            ("Safari", r"Version/(\d+(?:\.\d+)?)(?: Mobile/\S+)? Safari/"))
SYSTEMS = ((r"Android (\d+(?:\.\d+)?)", "Android {}"), (r"(?:iPhone|CPU) OS (\d+)_(\d+)", "iOS {}.{}"),
           (r"Mac OS X (\d+)[_.](\d+)", "macOS {}.{}"), (r"Windows NT (\d+\.\d+)", "Windows NT {}"),
           (r"CrOS", "ChromeOS"), (r"Linux", "Linux"))


def short_agent(device: dict[str, Any]) -> str:
    """'Pixel 8, Android 14, Chrome 126' from the device block: its model and os when given, else what the user
    agent says; the user agent's first 48 characters when nothing is recognised."""
    agent = device["user_agent"]
    system = device.get("os")
    for pattern, text in SYSTEMS if not system else ():
        if match := re.search(pattern, agent):
            system = text.format(*match.groups())
            break
    browser = next((f"{name} {m.group(1)}" for name, pattern in BROWSERS if (m := re.search(pattern, agent))), None)
    parts = [part for part in (device.get("model"), system, browser) if part]
    return ", ".join(parts) if parts else agent[:48]


def cell(value: Any, spec: str = "") -> str:
    """A table cell: '-' for a missing figure; a pipe or line break in machine-written text cannot split the row."""
    if value is None:
        return "-"
    text = format(value, spec) if spec else str(value)
    return " ".join(text.replace("|", "/").split())


def vision_encode_ms(figures: dict[str, Any]) -> float | None:
    components = figures["components"]
    if "image_encode_ms" in figures:
        return figures["image_encode_ms"]
    stats = components.get("vision_encoder") or components.get("image_encoder")
    return stats["median_ms"] if stats else None


def device_markdown(results: list[dict[str, Any]]) -> list[str]:
    lines = ["## Measured on devices", "",
             "Result files a demo app wrote on the device it ran on (measured_on: device): measurements, not "
             "projections, and not comparable row for row with the host tables above (other engines, other "
             "threads, other memory figures: see the memory source).", "",
             "| device | backend | threads | bundle | vision encode ms | TTFT ms | prefill tok/s | decode tok/s | "
             "peak memory MB | memory source |", "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        device, figures, peak = r["device"], r["figures"], r.get("peak_rss_bytes")
        lines.append(f"| {cell(short_agent(device))} | {cell(device['backend'])} | {cell(device['threads'])} | "
                     f"{cell(label(r))} | {cell(vision_encode_ms(figures), '.1f')} | "
                     f"{cell(figures.get('time_to_first_token_ms'), '.1f')} | "
                     f"{cell(figures.get('prefill_tokens_per_s'), '.1f')} | "
                     f"{cell(figures.get('decode_tokens_per_s'), '.1f')} | "
                     f"{cell(peak / 1e6 if peak else None, '.0f')} | {cell(device['memory_source'])} |")
    lines += ["", "Device result files: " + ", ".join(r["_file"] for r in results), ""]
    return lines


def load_extra(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(decode_peers results, full_size_export results) in ``folder``, each sorted by file name."""
    peers = [dict(json.loads(p.read_text()), _file=p.name) for p in sorted(folder.glob("decode_peers_*.json"))]
    exports = [dict(json.loads(p.read_text()), _file=p.name) for p in sorted(folder.glob("full_size_export_*.json"))]
    return peers, exports


ENGINE_NAMES = {"pocketvlm": "pocketvlm int4 (ONNX Runtime)", "genai": "onnxruntime-genai int4",
                "torch": "PyTorch eager fp32"}


def engine_name(name: str) -> str:
    base, _, options = name.partition(":")
    return ENGINE_NAMES.get(base, base) + (f" ({options})" if options else "")


def peer_groups(peers: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, float]]]]:
    return [(engine_name(name), [("measured decode", e["decode_tokens_per_s"]),
                                                 ("roofline (bandwidth / bytes per token)",
                                                  e["roofline_tokens_per_s"])])
            for r in peers for name, e in r["engines"].items()]


def extra_markdown(peers: list[dict[str, Any]], exports: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for r in peers:
        bandwidth = max(b[key] for b in (r["bandwidth"], r.get("bandwidth_after", r["bandwidth"]))
                        for key in ("copy_gbs", "add_gbs"))
        lines += [f"## Decode peers, one run: {r['checkpoint']} ({r['prompt_tokens']} prompt + {r['new_tokens']} "
                  f"new tokens, {r['threads']} threads, bandwidth {bandwidth:.1f} GB/s)", "",
                  "| engine | decode tok/s | vs onnxruntime-genai | first token ms | GB read/token | roofline tok/s "
                  "| fraction of roofline |", "|---|---:|---:|---:|---:|---:|---:|"]
        genai = r["engines"].get("genai", {}).get("decode_tokens_per_s")
        for name, e in r["engines"].items():
            versus = f"{e['decode_tokens_per_s'] / genai:.2f}x" if genai else "-"
            lines.append(f"| {engine_name(name)} | {e['decode_tokens_per_s']:.2f} | {versus} | "
                         f"{e['first_token_ms']:.0f} | {sum(e['bytes_per_token'].values()) / 1e9:.3f} | "
                         f"{e['roofline_tokens_per_s']:.1f} | {e['fraction_of_roofline'] * 100:.0f}% |")
        lines += ["", "![decode peers](decode_peers.png)", "", f"Result file: {r['_file']}", ""]
        ours = r["engines"].get("pocketvlm")
        if ours:
            lines += ["Phone projection of the pocketvlm decoder (a projection, not a measurement):", "",
                      "| phone | GB/s | roofline tok/s | at the fraction measured here | source |",
                      "|---|---:|---:|---:|---|"]
            per_token = sum(ours["bytes_per_token"].values())
            for phone, memory, gbs, source in PHONES:
                limit = gbs * 1e9 / per_token
                lines.append(f"| {phone}, {memory} | {gbs:.1f} | {limit:.1f} | "
                             f"{limit * ours['fraction_of_roofline']:.1f} | {source} |")
            lines.append("")
    if exports:
        lines += ["## Full-size exports (random weights, real architecture)", "",
                  "| model | target | quantization | export s | peak RSS GB | peak RSS / fp32 weight bytes | "
                  "bundle MB | bytes per parameter |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in exports:
            lines.append(f"| {r['model']} ({r['parameters'] / 1e9:.2f}B) | {r.get('target', 'onnx')} "
                         f"| {r['quant']} block {r.get('block_size', 32)}"
                         f" | {r['export_wall_s']:.0f} | {r['export_peak_rss_bytes'] / 1e9:.1f} | "
                         f"{r['peak_rss_vs_fp32_bytes']:.2f}x | {r['bundle_bytes'] / 1e6:.0f} | "
                         f"{r['bundle_bytes_per_parameter']:.4f} |")
        lines += ["", "Result files: " + ", ".join(r["_file"] for r in exports), ""]
    return lines


def web_markdown(folder: Path) -> list[str]:
    """``web_demo_speed*.json`` (``benchmarks/web_demo.py``): the page in headless Chromium against the native runtime
    on the same machine in one run, and the per-op profile of the decoder's matrix multiplications."""
    lines: list[str] = []
    for path in sorted(folder.glob("web_demo_speed*.json")):
        r = json.loads(path.read_text())
        lines += [f"## Web demo (headless Chromium, onnxruntime-web wasm) against the native runtime, one run "
                  f"({r['new_tokens']} new tokens)", "",
                  "| bundle | engine | threads | decode tok/s | vision encode ms | first token ms |",
                  "|---|---|---:|---:|---:|---:|"]
        for quant, row in r["bundles"].items():
            for key, name in (("native_2_threads", "native onnxruntime"), ("web_wasm_2_threads", "web wasm"),
                              ("web_wasm_1_threads", "web wasm")):
                e = row[key]
                lines.append(f"| shapes-captioner-{quant} | {name} | {e.get('threads', 2)} | "
                             f"{e['decode_tokens_per_s']:.2f} | {e['image_encode_ms']:.1f} | "
                             f"{e['time_to_first_token_ms']:.0f} |")
        lines += ["", "| bundle | web / native decode | web / native vision encode speed | web 2 / 1 thread decode | "
                  "web 2 / 1 thread vision encode | MatMulNBits ms per token, native / web (2 threads) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for quant, row in r["bundles"].items():
            q, per_token = row["ratios"], row["profile"]["matmulnbits_ms_per_token"]["2_threads"]
            lines.append(f"| shapes-captioner-{quant} | {q['web_over_native_decode']:.2f}x | "
                         f"{q['web_over_native_vision_encode_speed']:.2f}x | {q['web_2_over_1_thread_decode']:.2f}x | "
                         f"{q['web_2_over_1_thread_vision_encode']:.2f}x | {per_token['native_ms']:.1f} / "
                         f"{per_token['web_wasm_ms']:.1f} |")
        lines += ["", f"Result file: {path.name}", ""]
    return lines


def npu_markdown(folder: Path) -> list[str]:
    """The NPU coverage section (``benchmarks/npu_report.py``, loaded by path: this script also runs via runpy)."""
    spec = importlib.util.spec_from_file_location("npu_report", Path(__file__).with_name("npu_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.npu_markdown(folder)


def to_html(text: str) -> str:
    """The Markdown report as a standalone HTML page (tables, headings, images and paragraphs only)."""
    body, rows = [], []

    def flush_table() -> None:
        if rows:
            head, *rest = rows
            body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rest)
                        + "</table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}">')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>pocketvlm benchmark report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS / "bench")
    parser.add_argument("--extra", type=Path, default=RESULTS,
                        help="folder of decode_peers_*.json and full_size_export_*.json files")
    parser.add_argument("--out", type=Path, default=RESULTS / "report")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    host = [r for r in results if not on_device(r)]
    peers, exports = load_extra(args.extra)
    args.out.mkdir(parents=True, exist_ok=True)
    if host:
        bar_chart(latency_groups(host), "Latency per component, median", "ms", args.out / "latency.png")
    if any("roofline" in r for r in host):
        bar_chart(roofline_groups(host), "Decode tokens/s against the roofline", "tokens/s",
                  args.out / "decode_roofline.png")
    if peers:
        bar_chart(peer_groups(peers), "Decode tokens/s by engine, same run, against each one's roofline", "tokens/s",
                  args.out / "decode_peers.png")
    text = markdown(results) + "\n".join(extra_markdown(peers, exports) + web_markdown(args.extra)
                                         + npu_markdown(args.extra))
    (args.out / "report.md").write_text(text)
    (args.out / "report.html").write_text(to_html(text))
    print(f"wrote {args.out}/report.md, report.html and plots from {len(results)} result files")


if __name__ == "__main__":
    main()
