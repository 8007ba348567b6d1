"""Web demo speed against the native Python runtime, one run on one machine (issue 15's benchmark).

    python benchmarks/web_demo.py [--cache DIR] [--quants int8,int4] [--tokens 32] [--repeats 4]
                                  [--out benchmarks/results/web_demo_speed.json]

For each captioner bundle of the demo cache: the native runtime (``pocketvlm bench``'s ``run_bench``, onnxruntime,
2 threads) and the page in headless Chromium (onnxruntime-web wasm, ``web-demo/scripts/runner.mjs`` with
``--ignore-eos 1``, 2 threads and 1 thread; the first of ``--repeats`` captions is a warm-up) decode
``--tokens`` tokens after the same image; the ratios are web / native at 2 threads and web 2 threads / web 1 thread.
The page's result file (bench schema, ``measured_on: device``) goes to ``benchmarks/results/bench/`` for the report.

The profile: every distinct MatMulNBits shape of the decoder (and, for comparison, fp32 MatMul and dynamic W8A8
MatMulInteger at the commonest shape) as a one-op graph, timed on native onnxruntime and on onnxruntime-web's wasm
build under Node (``web-demo/scripts/op_bench.mjs``) at 1 and 2 threads; weighted by the op counts of the decoder
graph, the per-token time the matrix multiplications alone cost on each.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "web-demo" / "scripts" / "runner.mjs"
OP_BENCH = ROOT / "web-demo" / "scripts" / "op_bench.mjs"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(np.median(np.asarray(values, np.float64)))


def native(bundle: Path, image: Path, tokens: int, threads: int) -> dict[str, Any]:
    from pocketvlm.runtime.bench import run_bench

    result = run_bench(bundle, str(image), new_tokens=tokens, runs=5, warmup=1, threads=threads, bandwidth=False)
    figures = result["figures"]
    return {"decode_tokens_per_s": figures["decode_tokens_per_s"], "image_encode_ms": figures["image_encode_ms"],
            "time_to_first_token_ms": figures["time_to_first_token_ms"], "engine": result["engine"]}


def web(bundle: Path, image: Path, tokens: int, threads: int, repeats: int, result: Path | None) -> dict[str, Any]:
    cmd = ["node", str(RUNNER), "caption", "--bundle", str(bundle), "--threads", str(threads), "--max-new-tokens",
           str(tokens), "--ignore-eos", "1"] + ["--image", str(image)] * repeats
    if result is not None:
        cmd += ["--result", str(result)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"runner failed: {done.stderr.strip()[-2000:]}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")][1:]  # drop warm-up
    assert all(len(line["token_ids"]) == tokens for line in lines), "the page stopped before --tokens"
    return {"decode_tokens_per_s": median([line["figures"]["decode_tokens_per_s"] for line in lines]),
            "image_encode_ms": median([line["figures"]["image_encode_ms"] for line in lines]),
            "time_to_first_token_ms": median([line["figures"]["time_to_first_token_ms"] for line in lines]),
            "backend": lines[0]["backend"], "threads": lines[0]["threads"], "runs": len(lines)}


# -- the profile ---------------------------------------------------------------------------------------------------
def decoder_matmuls(bundle: Path) -> collections.Counter:
    """(op, K, N, bits) -> count in the bundle's text_decoder graph."""
    import onnx

    model = onnx.load(str(bundle / "text_decoder.onnx"), load_external_data=False)
    counts: collections.Counter = collections.Counter()
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            counts[("MatMulNBits", attrs["K"], attrs["N"], attrs["bits"])] += 1
    return counts


def one_op_graph(folder: Path, op: str, k: int, n: int, bits: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((k, n)).astype(np.float32) * 0.05
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])]
    if op == "MatMul":
        nodes, inits = [helper.make_node("MatMul", ["x", "W"], ["y"])], [numpy_helper.from_array(weights, "W")]
    elif op == "MatMulInteger":
        scale = np.float32(np.abs(weights).max() / 127)
        quantized = np.clip(np.round(weights / scale), -127, 127).astype(np.int8)
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                 helper.make_node("MatMulInteger", ["xq", "Wq", "xz"], ["acc"]),
                 helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["xs", "Ws"], ["s"]), helper.make_node("Mul", ["accf", "s"], ["y"])]
        inits = [numpy_helper.from_array(quantized, "Wq"), numpy_helper.from_array(np.asarray(scale), "Ws")]
    else:
        block, levels = 32, 2**bits - 1
        grouped = weights.T.reshape(n, k // block, block)
        scales = (np.abs(grouped).max(-1) / (levels / 2)).astype(np.float32)
        codes = np.clip(np.round(grouped / scales[..., None]) + (levels + 1) // 2, 0, levels).astype(np.uint8)
        packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8) if bits == 4 else codes
        nodes = [helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=k, N=n,
                                  bits=bits, block_size=block, accuracy_level=4)]
        inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales.reshape(-1), "S")]
    graph = helper.make_graph(nodes, f"{op}_{k}x{n}_{bits}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft",
                                                                                                     1)])
    model.ir_version = 10  # onnxruntime-web 1.30 reads IR <= 13
    path = folder / f"{op}_{k}x{n}_{bits}.onnx"
    onnx.save(model, str(path))
    return path


def time_native(path: Path, threads: int, runs: int = 50) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    k = session.get_inputs()[0].shape[1]
    feeds = {"x": np.sin(np.arange(k, dtype=np.float32))[None]}
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - started) * 1e3)
    return median(times)


def time_web(paths: list[Path], threads: int, runs: int = 50) -> dict[str, float]:
    done = subprocess.run(["node", str(OP_BENCH), "--threads", str(threads), "--runs", str(runs),
                           *map(str, paths)], capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"op_bench failed: {done.stderr.strip()[-2000:]}")
    return {json.loads(line)["model"]: json.loads(line)["median_ms"] for line in done.stdout.splitlines()}


def profile(bundle: Path) -> dict[str, Any]:
    counts = decoder_matmuls(bundle)
    commonest = max(counts, key=lambda key: counts[key] * key[1] * key[2])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        graphs = {key: one_op_graph(folder, "MatMulNBits", key[1], key[2], key[3]) for key in counts}
        extra = {("MatMul", commonest[1], commonest[2], 32): one_op_graph(folder, "MatMul", *commonest[1:3]),
                 ("MatMulInteger", commonest[1], commonest[2], 8): one_op_graph(folder, "MatMulInteger",
                                                                                 *commonest[1:3])}
        rows, per_token = [], {}
        for threads in (1, 2):
            web_ms = time_web([*graphs.values(), *extra.values()], threads)
            for key, path in {**graphs, **extra}.items():
                rows.append({"op": key[0], "K": key[1], "N": key[2], "bits": key[3], "threads": threads,
                             "count_in_decoder": counts.get(key, 0), "native_ms": time_native(path, threads),
                             "web_wasm_ms": web_ms[str(path)]})
            mine = [r for r in rows if r["threads"] == threads and r["count_in_decoder"]]
            per_token[f"{threads}_threads"] = {
                "native_ms": sum(r["native_ms"] * r["count_in_decoder"] for r in mine),
                "web_wasm_ms": sum(r["web_wasm_ms"] * r["count_in_decoder"] for r in mine)}
    return {"ops": rows, "matmulnbits_ms_per_token": per_token}


def main() -> None:
    from pocketvlm.cli.demo_cmd import default_cache
    from pocketvlm.demo.shapes.data import load_split
    from pocketvlm.export.bundle_writer import tool_versions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--quants", default="int8,int4")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "web_demo_speed.json")
    args = parser.parse_args()
    image = load_split("test")[0].path
    bench_dir = ROOT / "benchmarks" / "results" / "bench"
    out: dict[str, Any] = {"kind": "web_demo_speed", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                  time.gmtime()),
                           "machine": {"platform": platform.platform(), "cpu": platform.processor(),
                                       "logical_cpus": __import__("os").cpu_count()},
                           "tools": tool_versions(), "new_tokens": args.tokens, "image": image.name, "bundles": {}}
    for quant in args.quants.split(","):
        bundle = args.cache / "bundles" / f"shapes-captioner-{quant}"
        say(f"{quant}: native runtime, 2 threads")
        row: dict[str, Any] = {"native_2_threads": native(bundle, image, args.tokens, 2)}
        for threads in (2, 1):
            say(f"{quant}: page, wasm, {threads} thread(s)")
            result = bench_dir / f"web_chromium_headless_shapes-captioner-{quant}_{threads}t.json"
            row[f"web_wasm_{threads}_threads"] = web(bundle, image, args.tokens, threads, args.repeats, result)
        web2, web1, nat = row["web_wasm_2_threads"], row["web_wasm_1_threads"], row["native_2_threads"]
        row["ratios"] = {
            "web_over_native_decode": web2["decode_tokens_per_s"] / nat["decode_tokens_per_s"],
            "web_over_native_vision_encode_speed": nat["image_encode_ms"] / web2["image_encode_ms"],
            "web_2_over_1_thread_decode": web2["decode_tokens_per_s"] / web1["decode_tokens_per_s"],
            "web_2_over_1_thread_vision_encode": web1["image_encode_ms"] / web2["image_encode_ms"]}
        say(f"{quant}: {row['ratios']}")
        say(f"{quant}: profile of the decoder's matrix multiplications")
        row["profile"] = profile(bundle)
        out["bundles"][quant] = row
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    say(f"written: {args.out}")


if __name__ == "__main__":
    main()
