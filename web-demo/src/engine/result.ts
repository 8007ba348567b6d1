/** The downloadable result file, in runtime/schema/bench.schema.json with `measured_on: "device"` and a `device`
 * block (what the page could observe). */

import type { Engine } from "./engine.js";
import { estimateMemory } from "./manifest.js";

export const WEB_VERSION = "0.1.0";
export const ORT_VERSION = "1.30.0";

export interface DeviceInfo {
  user_agent: string;
  backend: string; // what ran
  threads: number;
  cross_origin_isolated: boolean;
  memory_source: string; // "measureUserAgentSpecificMemory" | "performance.memory.usedJSHeapSize" | "none" | ...
  peak_memory_bytes: number | null;
  platform: string;
  logical_cpus: number | null;
  device_memory_gib: number | null;
  webgpu_adapter?: string | null;
}

export interface PageFigures { bundle_download_ms: number; bundle_verify_ms: number; session_load_ms: number }

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function runFigures(engine: Engine): Record<string, number> {
  const runs = engine.runs;
  if (!runs.length) return {};
  const last = runs[runs.length - 1];
  const t = runs.map((r) => r.timings);
  const figures: Record<string, number> = {
    prompt_tokens: last.promptTokens,
    new_tokens: Math.max(last.tokenIds.length, 1),
    preprocess_ms: Math.max(median(t.map((x) => x.preprocess_ms)), 1e-3),
    image_encode_ms: Math.max(median(t.map((x) => x.image_encode_ms)), 1e-3),
    time_to_first_token_ms: Math.max(median(t.map((x) => x.time_to_first_token_ms)), 1e-3),
    prefill_tokens_per_s: median(runs.map((r) => r.promptTokens / Math.max(r.timings.prefill_ms / 1e3, 1e-6))),
  };
  const decoded = t.filter((x) => x.decode_tokens > 0);
  if (decoded.length) figures.decode_tokens_per_s = median(decoded.map((x) => x.decode_tokens / (x.decode_ms / 1e3)));
  return figures;
}

export function resultFile(engine: Engine, device: DeviceInfo, page: PageFigures): Record<string, unknown> {
  const m = engine.bundle.manifest;
  const engines = Object.fromEntries(Object.entries(engine.model.sessions).map(([name, s]) =>
    [name, `onnxruntime-web ${ORT_VERSION} ${s.backend}`]));
  const wasm = device.backend.startsWith("wasm") ? ` (${device.threads} thread${device.threads > 1 ? "s" : ""})` : "";
  const memory = estimateMemory(m);
  return {
    schema_version: 1, kind: "bundle_bench", measured_on: "device",
    created_utc: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    machine: { platform: device.platform, cpu: "unknown (browser)", logical_cpus: device.logical_cpus,
      memory_bytes: device.device_memory_gib ? Math.round(device.device_memory_gib * 1024 ** 3) : null },
    tools: { "onnxruntime-web": ORT_VERSION, "pocketvlm-web": WEB_VERSION },
    threads: Math.max(device.threads, 1),
    engine: `onnxruntime-web ${ORT_VERSION} ${device.backend}${wasm}`,
    engines,
    bundle: { path: engine.bundle.label, family: m.family, target: m.target, task: m.task,
      manifest_sha256: engine.bundle.manifestSha256,
      quantization: Object.fromEntries(Object.entries(m.components).map(([n, c]) => [n, c.quantization.method])),
      bytes: m.files.reduce((s, f) => s + Number(f.bytes), 0),
      component_bytes: Object.fromEntries(Object.entries(m.components).map(([n, c]) => [n, Number(c.bytes)])) },
    figures: { components: engine.componentFigures(), ...runFigures(engine),
      bundle_download_ms: Math.max(page.bundle_download_ms, 1e-3), session_load_ms: Math.max(page.session_load_ms, 1e-3),
      bundle_verify_ms: page.bundle_verify_ms, kv_cache_bytes_at_max_context: memory.kvCacheBytes },
    peak_rss_bytes: device.peak_memory_bytes && device.peak_memory_bytes > 0 ? device.peak_memory_bytes : null,
    device,
  };
}
