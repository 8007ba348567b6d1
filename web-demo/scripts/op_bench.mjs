#!/usr/bin/env node
// Times single-op ONNX graphs on onnxruntime-web's wasm build under Node, for benchmarks/web_demo.py's profile:
//   node web-demo/scripts/op_bench.mjs --threads N --runs R MODEL.onnx [MODEL.onnx ...]
// Each graph takes one float32 input "x" [1, K]; prints one JSON line per model: {"model", "median_ms", "runs"}.
import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-web";

const argv = process.argv.slice(2);
const option = (name, fallback) => {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const value = argv[i + 1];
  argv.splice(i, 2);
  return value;
};
const threads = Number(option("threads", "1"));
const runs = Number(option("runs", "50"));
ort.env.wasm.numThreads = threads;
ort.env.logLevel = "error";
for (const file of argv) {
  const session = await ort.InferenceSession.create(readFileSync(file), { executionProviders: ["wasm"] });
  const meta = session.inputMetadata?.[0];
  const k = Number(meta?.shape?.[1] ?? 576);
  const feeds = { x: new ort.Tensor("float32", Float32Array.from({ length: k }, (_, i) => Math.sin(i)), [1, k]) };
  for (let i = 0; i < 3; i++) await session.run(feeds);
  const times = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    await session.run(feeds);
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  console.log(JSON.stringify({ model: file, median_ms: times[Math.floor(runs / 2)], runs, threads }));
  await session.release();
}
