/** Token selection and the fixed-size KV cache of the generation loop, as runtime/generation.py. */

import { EngineError } from "./errors.js";
import { f32, i64, type Tensor } from "./tensor.js";

export interface GenerationConfig {
  maxNewTokens: number;
  doSample: boolean;
  temperature: number;
  topK: number;
  topP: number;
  seed?: number;
  stopTokenIds: number[];
  ignoreEos: boolean;
}

export function generationConfig(options: Partial<GenerationConfig> = {}): GenerationConfig {
  const c: GenerationConfig = { maxNewTokens: 32, doSample: false, temperature: 1, topK: 0, topP: 1, stopTokenIds: [],
    ignoreEos: false, ...options };
  if (!(c.maxNewTokens >= 1)) {
    throw new EngineError("input", `max_new_tokens must be >= 1, got ${c.maxNewTokens}`, "pass 1 or more");
  }
  if (!(c.temperature > 0)) throw new EngineError("input", `temperature must be > 0, got ${c.temperature}`,
    "use greedy decoding (doSample false)");
  if (!(c.topP > 0 && c.topP <= 1)) throw new EngineError("input", `top_p must be in (0, 1], got ${c.topP}`,
    "pass a value like 0.9");
  if (!(c.topK >= 0)) throw new EngineError("input", `top_k must be >= 0, got ${c.topK}`, "pass 0 to disable top-k");
  return c;
}

/** SplitMix64: a seeded stream of doubles in [0, 1) (53 bits). Not numpy's PCG64: same seed, different stream. */
export class SeededRandom {
  private state: bigint;

  constructor(seed?: number) {
    const start = seed ?? Math.floor(Math.random() * 2 ** 52);
    this.state = BigInt.asUintN(64, BigInt(start));
  }

  next(): number {
    this.state = BigInt.asUintN(64, this.state + 0x9e3779b97f4a7c15n);
    let z = this.state;
    z = BigInt.asUintN(64, (z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n);
    z = BigInt.asUintN(64, (z ^ (z >> 27n)) * 0x94d049bb133111ebn);
    z = z ^ (z >> 31n);
    return Number(z >> 11n) / 2 ** 53;
  }
}

export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Greedy, or temperature / top-k / top-p sampling with the exact steps of the Python Sampler. */
export class Sampler {
  private readonly rng: SeededRandom;

  constructor(private readonly config: GenerationConfig) {
    this.rng = new SeededRandom(config.seed);
  }

  choose(logits: Float32Array): number {
    if (!this.config.doSample) return argmax(logits);
    const probs = this.probabilities(logits);
    const u = this.rng.next();
    let cdf = 0;
    const total = probs.reduce((a, b) => a + b, 0);
    for (let i = 0; i < probs.length; i++) {
      cdf += probs[i];
      if (cdf / total > u) return i; // numpy: cdf.searchsorted(u, side="right") over cdf / cdf[-1]
    }
    return probs.length - 1;
  }

  /** The distribution the sampler draws from (float64), after temperature, top-k and top-p. */
  probabilities(logits: Float32Array): Float64Array {
    const { temperature, topK, topP } = this.config;
    const scores = Float64Array.from(logits, (v) => v / temperature);
    if (topK) {
      const sorted = Float64Array.from(scores).sort();
      const kth = sorted[sorted.length - Math.min(topK, scores.length)];
      for (let i = 0; i < scores.length; i++) if (scores[i] < kth) scores[i] = -Infinity;
    }
    const max = scores.reduce((a, b) => Math.max(a, b), -Infinity);
    let probs = scores.map((s) => Math.exp(s - max));
    const sum = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / sum);
    if (topP < 1) {
      const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]);
      const keep = new Uint8Array(probs.length);
      let cumulative = 0;
      for (const index of order) {
        if (cumulative < topP) keep[index] = 1; // cumsum - p < top_p
        cumulative += probs[index];
      }
      probs = probs.map((p, i) => (keep[i] ? p : 0));
      const kept = probs.reduce((a, b) => a + b, 0);
      probs = probs.map((p) => p / kept);
    }
    return probs;
  }
}

/**
 * One preallocated [1, kv_heads, capacity, head_dim] Float32Array per layer and kind, filled in place: `past_*` is
 * the whole buffer, `present_*` outputs carry only the new entries, copied into the next free slots; the
 * attention mask (capacity + new) marks the filled slots, then the new tokens. Nothing is reallocated per token.
 */
export class KVCache {
  filled = 0;
  readonly buffers = new Map<string, Float32Array>();
  private readonly mask: BigInt64Array;

  constructor(readonly layers: number, readonly kvHeads: number, readonly headDim: number, readonly capacity: number) {
    for (let layer = 0; layer < layers; layer++) {
      for (const kind of ["key", "value"]) {
        this.buffers.set(`past_${kind}_${layer}`, new Float32Array(kvHeads * capacity * headDim));
      }
    }
    this.mask = new BigInt64Array(capacity * 2);
  }

  /** The past_* feeds: the same buffers every step. */
  feeds(): Record<string, Tensor> {
    const feeds: Record<string, Tensor> = {};
    for (const [name, buffer] of this.buffers) feeds[name] = f32(buffer, [1, this.kvHeads, this.capacity, this.headDim]);
    return feeds;
  }

  attentionMask(newTokens: number): Tensor {
    const mask = this.mask.subarray(0, this.capacity + newTokens);
    mask.fill(0n);
    mask.fill(1n, 0, this.filled);
    mask.fill(1n, this.capacity, this.capacity + newTokens);
    return i64(mask, [1, this.capacity + newTokens]);
  }

  append(outputs: Record<string, Tensor>, newTokens: number): void {
    if (this.filled + newTokens > this.capacity) {
      throw new EngineError("input", `KV cache full (${this.capacity} tokens)`,
        "lower max_new_tokens or shorten the prompt");
    }
    const run = newTokens * this.headDim;
    for (const [name, buffer] of this.buffers) {
      const present = outputs[name.replace("past_", "present_")];
      if (!present) throw new EngineError("bundle", `the text_decoder returned no ${name.replace("past_", "present_")}`,
        "re-export the bundle with `pocketvlm export`");
      const src = present.data as Float32Array;
      for (let h = 0; h < this.kvHeads; h++) {
        buffer.set(src.subarray(h * run, (h + 1) * run), (h * this.capacity + this.filled) * this.headDim);
      }
    }
    this.filled += newTokens;
  }
}
