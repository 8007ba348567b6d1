/** Sampler and KV cache against runtime/generation.py. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { generationConfig, KVCache, Sampler } from "../src/engine/generation.js";
import { f32 } from "../src/engine/tensor.js";
import { python, rng } from "./python.js";

test("sampling distribution (temperature, top-k, top-p) equals the Python Sampler's", () => {
  const next = rng(11);
  const cases = [
    { temperature: 0.7, topK: 0, topP: 1 }, { temperature: 1, topK: 5, topP: 1 },
    { temperature: 1.3, topK: 0, topP: 0.8 }, { temperature: 0.5, topK: 8, topP: 0.6 },
  ].map((c) => ({ ...c, logits: Array.from({ length: 40 }, () => Math.fround((next() - 0.5) * 12)) }));
  // the Python Sampler's distribution: its __call__ up to the draw
  const want = python<number[][]>(`
import numpy as np
result = []
for c in data:
    scores = np.asarray(c["logits"], np.float32).astype(np.float64) / c["temperature"]
    if c["topK"]:
        kth = np.sort(scores)[-min(c["topK"], scores.size)]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max()); probs /= probs.sum()
    if c["topP"] < 1.0:
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] < c["topP"]
        mask = np.zeros_like(probs, dtype=bool); mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0); probs /= probs.sum()
    result.append(probs.tolist())
`, cases);
  cases.forEach((c, i) => {
    const sampler = new Sampler(generationConfig({ doSample: true, ...c }));
    const ours = sampler.probabilities(Float32Array.from(c.logits));
    ours.forEach((p, j) => assert.ok(Math.abs(p - want[i][j]) < 1e-12, `case ${i} id ${j}: ${p} vs ${want[i][j]}`));
  });
});

test("greedy is argmax; a seeded sampler repeats itself and draws only kept ids", () => {
  const logits = Float32Array.from([0.1, 3, -1, 2.9, 0]);
  assert.equal(new Sampler(generationConfig()).choose(logits), 1);
  const draw = (seed: number) => {
    const s = new Sampler(generationConfig({ doSample: true, topK: 2, seed }));
    return Array.from({ length: 50 }, () => s.choose(logits));
  };
  assert.deepEqual(draw(3), draw(3));
  assert.ok(draw(3).every((t) => t === 1 || t === 3));
  assert.ok(new Set(draw(4)).size === 2);
});

test("KV cache: new entries land in the next free slots, the mask marks filled + new, no reallocation", () => {
  const cache = new KVCache(2, 2, 3, 5);
  const before = [...cache.buffers.values()];
  const present = (n: number, base: number) => f32(Float32Array.from({ length: 2 * n * 3 }, (_, i) => base + i), [1, 2, n, 3]);
  const outputs = (n: number, base: number) => Object.fromEntries([0, 1].flatMap((l) =>
    ["key", "value"].map((k) => [`present_${k}_${l}`, present(n, base)])));
  assert.deepEqual(Array.from(cache.attentionMask(2).data as BigInt64Array, Number), [0, 0, 0, 0, 0, 1, 1]);
  cache.append(outputs(2, 100), 2);
  assert.deepEqual(Array.from(cache.attentionMask(1).data as BigInt64Array, Number), [1, 1, 0, 0, 0, 1]);
  cache.append(outputs(1, 500), 1);
  const key0 = cache.buffers.get("past_key_0")!;
  // head 0: slots 0-1 from the first append (100..105), slot 2 from the second (500..502)
  assert.deepEqual(Array.from(key0.subarray(0, 9)), [100, 101, 102, 103, 104, 105, 500, 501, 502]);
  // head 1 starts at capacity * head_dim = 15: 106..111 then 503..505
  assert.deepEqual(Array.from(key0.subarray(15, 24)), [106, 107, 108, 109, 110, 111, 503, 504, 505]);
  assert.deepEqual([...cache.buffers.values()], before);
  assert.equal(cache.feeds().past_key_0.data, key0);
  assert.throws(() => cache.append(outputs(3, 0), 3), /KV cache full/);
});
