/** Measures of one run, in the names of runtime/schema/bench.schema.json's `figures`. */

import type { ComponentSession } from "./session.js";
import type { GenerationResult } from "./vlm.js";

export interface Summary { median_ms: number; p90_ms: number; min_ms: number; runs: number }

/** median / p90 (numpy's linear percentile) / min of run times in ms. */
export function summarize(ms: number[]): Summary {
  const sorted = [...ms].sort((a, b) => a - b);
  const at = (q: number) => {
    const pos = (sorted.length - 1) * q;
    const lo = Math.floor(pos), hi = Math.ceil(pos);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
  };
  return { median_ms: at(0.5), p90_ms: at(0.9), min_ms: sorted[0], runs: sorted.length };
}

const positive = (v: number) => Math.max(v, 1e-6);

/** Figures of one generation: per-stage times and token rates. */
export function generationFigures(result: GenerationResult): Record<string, number> {
  const t = result.timings;
  const figures: Record<string, number> = {
    prompt_tokens: result.promptTokens,
    new_tokens: result.tokenIds.length,
    preprocess_ms: positive(t.preprocess_ms),
    image_encode_ms: positive(t.image_encode_ms),
    time_to_first_token_ms: positive(t.time_to_first_token_ms),
    prefill_tokens_per_s: result.promptTokens / (positive(t.prefill_ms) / 1e3),
  };
  if (t.decode_tokens > 0) figures.decode_tokens_per_s = t.decode_tokens / (positive(t.decode_ms) / 1e3);
  return figures;
}

/** figures.components: every component's runs, a labelled run under `<component>_<label>` (the text decoder's
 * prefill and decode steps apart, as runtime/bench.py's text_decoder_prefill). */
export function componentFigures(sessions: Record<string, ComponentSession>): Record<string, Summary> {
  const groups = new Map<string, number[]>();
  for (const [name, session] of Object.entries(sessions)) {
    session.times.forEach((ms, i) => {
      const key = session.labels[i] ? `${name}_${session.labels[i]}` : name;
      groups.set(key, [...(groups.get(key) ?? []), ms]);
    });
  }
  return Object.fromEntries([...groups].map(([key, ms]) => [key, summarize(ms)]));
}
