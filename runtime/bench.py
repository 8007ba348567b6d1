"""Benchmarks of a bundle on this machine, written in one result schema (``runtime/schema/bench.schema.json``) that
the demo apps write too: per-component latency (median and p90 after warm-up), and for VLMs image-encode time, time
to first token, prefill and decode tokens/s; peak RSS, bundle size, provenance (machine, threads, tool versions,
manifest hash) and the decode roofline against this machine's measured memory bandwidth.

Runtime code: numpy and the target's runtime only, so the same measurement runs wherever a bundle runs.
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketvlm.runtime.image import ImageInput
from pocketvlm.runtime.vlm import DEFAULT_CAPTION_PROMPT

if TYPE_CHECKING:
    from pocketvlm.runtime.coreml import PredictorFactory

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schema" / "bench.schema.json"
Say = Callable[[str], None]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    memory = None
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                   cpu)
        meminfo = Path("/proc/meminfo").read_text().split()
        memory = int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024
    except (OSError, ValueError):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "logical_cpus": os.cpu_count(), "memory_bytes": memory,
            "python": platform.python_version()}


def runtime_versions() -> dict[str, str]:
    found = {}
    for name in ("pocketvlm", "numpy", "onnxruntime", "onnxruntime-genai", "ai-edge-litert", "coremltools", "torch",
                 "transformers"):
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


def peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def summarize(seconds: list[float]) -> dict[str, float]:
    ms = sorted(t * 1e3 for t in seconds)
    return {"median_ms": statistics.median(ms), "p90_ms": float(np.percentile(ms, 90)), "min_ms": ms[0],
            "runs": len(ms)}


def timed(fn: Callable[[], Any], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def memory_bandwidth(megabytes: int = 256, repeats: int = 5, threads: int = 0) -> dict[str, Any]:
    """STREAM-like copy (read + write) and add (two reads + write) over arrays far larger than the caches, split
    across ``threads`` workers (numpy releases the GIL in both); the best of ``repeats``, in GB/s (1e9 bytes)."""
    from concurrent.futures import ThreadPoolExecutor

    workers = threads or os.cpu_count() or 1
    n = megabytes * (1 << 20) // 8
    a, b, c = np.ones(n), np.full(n, 2.0), np.full(n, 3.0)
    bounds = np.linspace(0, n, workers + 1).astype(int)
    chunks = list(zip(bounds[:-1], bounds[1:], strict=True))

    def copy(lo: int, hi: int) -> None:
        np.copyto(a[lo:hi], b[lo:hi])

    def add(lo: int, hi: int) -> None:
        np.add(b[lo:hi], c[lo:hi], out=a[lo:hi])

    best = {"copy_gbs": 0.0, "add_gbs": 0.0}
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(repeats):
            for key, kernel, passes in (("copy_gbs", copy, 2), ("add_gbs", add, 3)):
                started = time.perf_counter()
                list(pool.map(lambda bound, run=kernel: run(*bound), chunks))
                best[key] = max(best[key], passes * a.nbytes / (time.perf_counter() - started) / 1e9)
    return {**best, "array_mb": megabytes, "threads": workers}


def bundle_info(bundle: Any) -> dict[str, Any]:
    manifest = bundle.manifest
    return {"path": str(bundle.path), "family": manifest["family"], "target": manifest["target"],
            "task": manifest.get("task"),
            "manifest_sha256": hashlib.sha256((bundle.path / "manifest.json").read_bytes()).hexdigest(),
            "quantization": {name: spec["quantization"]["method"] for name, spec in manifest["components"].items()},
            "bytes": sum(f["bytes"] for f in manifest["files"]),
            "component_bytes": {name: component_bytes(bundle, name) for name in manifest["components"]}}


def component_bytes(bundle: Any, name: str) -> int:
    spec = bundle.manifest["components"][name]
    extra = spec.get("external_data")
    return int(spec["bytes"]) + ((bundle.path / extra).stat().st_size if extra else 0)


def engines(sessions: dict[str, Any]) -> dict[str, str]:
    """What actually ran each component, as its session describes itself."""
    return {name: session.backend for name, session in sessions.items()}


def bench_dual_encoder(path: Path, image: ImageInput, runs: int, warmup: int, threads: int, say: Say,
                       predictor: PredictorFactory | None = None) -> tuple[Any, dict[str, Any]]:
    from pocketvlm.runtime.dual_encoder import DualEncoder

    model = DualEncoder.load(path, threads=threads, predictor=predictor)
    pixels = model.pixel_values([image])
    tokens = model.tokenizer.encode(model.prompts(["a dog"]))
    say(f"image_encoder: {warmup} warm-up + {runs} runs")
    image_times = timed(lambda: model.sessions["image_encoder"].run({"pixel_values": pixels}), runs, warmup)
    say(f"text_encoder: {warmup} warm-up + {runs} runs")
    text_times = timed(lambda: model.sessions["text_encoder"].run(tokens), runs, warmup)
    return model, {"components": {"image_encoder": summarize(image_times), "text_encoder": summarize(text_times)}}


def bench_vlm(path: Path, image: ImageInput, prompt: str, new_tokens: int, runs: int, warmup: int, threads: int,
              say: Say, predictor: PredictorFactory | None = None) -> tuple[Any, dict[str, Any]]:
    from pocketvlm.runtime.generation import GenerationConfig
    from pocketvlm.runtime.vlm import VisionLanguageModel

    model = VisionLanguageModel.load(path, threads=threads, predictor=predictor)
    ids, processed = model.prepare(image, prompt)
    config = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    results = []
    for i in range(warmup + runs):
        say(f"generation {i + 1}/{warmup + runs} ({'warm-up' if i < warmup else 'timed'}): {len(ids)} prompt tokens "
            f"+ {new_tokens} new")
        result = model.generate_ids(ids, processed, config)
        if i >= warmup:
            results.append(result.timings)
    image_s = [t["image_encode_s"] for t in results]
    prefill_s = [t["prefill_s"] for t in results]
    decode_rates = [t["decode_tokens"] / t["decode_s"] for t in results]
    layers, heads, dim = (model.decoder[k] for k in ("num_layers", "kv_heads", "head_dim"))
    mean_context = len(ids) + new_tokens / 2
    figures = {
        "prompt_tokens": int(len(ids)), "new_tokens": new_tokens,
        "components": {"vision_encoder": summarize(image_s), "text_decoder_prefill": summarize(prefill_s)},
        "image_encode_ms": statistics.median(image_s) * 1e3,
        "time_to_first_token_ms": statistics.median(a + b for a, b in zip(image_s, prefill_s, strict=True)) * 1e3,
        "prefill_tokens_per_s": len(ids) / statistics.median(prefill_s),
        "decode_tokens_per_s": statistics.median(decode_rates),
        "decode_tokens_per_s_p10": float(np.percentile(decode_rates, 10)),
        "bytes_per_decode_token": {"weights": component_bytes(model.bundle, "text_decoder"),
                                   "kv_cache_at_mean_context": int(2 * layers * heads * dim * 4 * mean_context)},
    }
    return model, figures


def roofline(figures: dict[str, Any], bandwidth: dict[str, float]) -> dict[str, Any]:
    """Decode is memory-bound: each token reads the decoder weights and the KV cache once. The roofline is
    bandwidth / bytes per token; the measured rate is reported as a fraction of it."""
    per_token = sum(figures["bytes_per_decode_token"].values())
    best = max(bandwidth["copy_gbs"], bandwidth["add_gbs"]) * 1e9
    limit = best / per_token
    return {"bytes_per_token": per_token, "bandwidth_gbs": best / 1e9, "roofline_tokens_per_s": limit,
            "fraction_of_roofline": figures["decode_tokens_per_s"] / limit}


def run_bench(path: Path, image: ImageInput, prompt: str = DEFAULT_CAPTION_PROMPT, new_tokens: int = 32,
              runs: int = 10, warmup: int = 2, threads: int = 0, bandwidth: bool = True,
              say: Say | None = None, predictor: PredictorFactory | None = None) -> dict[str, Any]:
    """``predictor`` runs Core ML packages (default: Core ML itself on macOS; see ``backends.open_session``)."""
    from pocketvlm.runtime.manifest import load_bundle

    say = say or (lambda message: None)
    task = load_bundle(path).manifest.get("task")
    if task == "image_text_to_text":
        model, figures = bench_vlm(path, image, prompt, new_tokens, runs, warmup, threads, say, predictor)
    else:
        model, figures = bench_dual_encoder(path, image, runs, warmup, threads, say, predictor)
    ran = engines(model.sessions)
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": "bundle_bench",
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(), "tools": runtime_versions(), "threads": threads or os.cpu_count(),
        "engine": "; ".join(dict.fromkeys(ran.values())), "engines": ran, "bundle": bundle_info(model.bundle),
        "figures": figures, "peak_rss_bytes": peak_rss_bytes(),
    }
    if bandwidth:
        say("measuring memory bandwidth (STREAM-like copy / add)")
        result["memory_bandwidth"] = memory_bandwidth(threads=threads)
        if "decode_tokens_per_s" in figures:
            result["roofline"] = roofline(figures, result["memory_bandwidth"])
    return result
