/** What the page can learn about the device: WebGPU adapter, threads, isolation, memory (and how it was measured). */

import type { DeviceInfo } from "../engine/result.js";

export interface Capabilities {
  isolated: boolean;
  cores: number;
  deviceMemoryGiB: number | null;
  webgpu: string | null; // adapter description, or null when none
}

export async function capabilities(): Promise<Capabilities> {
  let webgpu: string | null = null;
  const gpu = (navigator as { gpu?: { requestAdapter(): Promise<{ info?: { vendor?: string; architecture?: string;
    description?: string } } | null> } }).gpu;
  if (gpu) {
    try {
      const adapter = await gpu.requestAdapter();
      if (adapter) {
        const info = adapter.info ?? {};
        webgpu = [info.vendor, info.architecture, info.description].filter(Boolean).join(" ") || "adapter";
      }
    } catch {
      webgpu = null;
    }
  }
  return { isolated: globalThis.crossOriginIsolated === true, cores: navigator.hardwareConcurrency || 1,
    deviceMemoryGiB: (navigator as { deviceMemory?: number }).deviceMemory ?? null, webgpu };
}

export function platformFromUA(ua: string): string {
  const rules: [RegExp, string][] = [[/Android [\d.]+/, ""], [/iPhone OS [\d_]+/, ""], [/iPad/, "iPadOS"],
    [/Mac OS X [\d_]+/, ""], [/Windows NT [\d.]+/, ""], [/CrOS/, "ChromeOS"], [/Linux/, "Linux"]];
  for (const [re, name] of rules) {
    const m = ua.match(re);
    if (m) return (name || m[0]).replace(/_/g, ".");
  }
  return "unknown";
}

let peak = 0;
let peakSource = "none";

/** Samples performance.memory (Chrome) during a run; cheap, so it can be called per token. */
export function sampleMemory(): void {
  const memory = (performance as { memory?: { usedJSHeapSize: number } }).memory;
  if (memory && memory.usedJSHeapSize > peak) {
    peak = memory.usedJSHeapSize;
    peakSource = "performance.memory.usedJSHeapSize (JS heap only, sampled per token)";
  }
}

/** The per-token sample so far (instant; the page shows it while the slow measurement runs). */
export function sampledMemory(): { bytes: number | null; source: string } {
  sampleMemory();
  return { bytes: peak || null, source: peak ? peakSource : "none (this browser exposes no memory figure)" };
}

/** After a run: measureUserAgentSpecificMemory() when the page is cross-origin isolated (resolves slowly, ~12 s in
 * Chromium; includes wasm memory), else the sampled JS heap. */
export async function measureMemory(timeoutMs = 30_000): Promise<{ bytes: number | null; source: string }> {
  const measure = (performance as { measureUserAgentSpecificMemory?: () => Promise<{ bytes: number }> })
    .measureUserAgentSpecificMemory;
  if (globalThis.crossOriginIsolated && measure) {
    try {
      const result = await Promise.race([measure.call(performance),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error("timeout")), timeoutMs))]);
      return { bytes: result.bytes, source: "performance.measureUserAgentSpecificMemory (after the run)" };
    } catch {
      // fall through to the sampled heap
    }
  }
  sampleMemory();
  return { bytes: peak || null, source: peak ? peakSource : "none (this browser exposes no memory figure)" };
}

export function deviceInfo(backend: string, threads: number, memory: { bytes: number | null; source: string },
  caps: Capabilities): DeviceInfo {
  return { user_agent: navigator.userAgent, backend, threads, cross_origin_isolated: caps.isolated,
    memory_source: memory.source, peak_memory_bytes: memory.bytes, platform: platformFromUA(navigator.userAgent),
    logical_cpus: caps.cores, device_memory_gib: caps.deviceMemoryGiB, webgpu_adapter: caps.webgpu };
}
