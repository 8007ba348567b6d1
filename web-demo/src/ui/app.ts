/** The page's controller, shared by the buttons and the automation API (window.pocketvlm): load a bundle, hold the
 * current image, run caption / ask / classify / self-test, and build the result file. No DOM rendering here. */

import { Engine, type CaptionOutput, type ClassifyOutput } from "../engine/engine.js";
import { EngineError } from "../engine/errors.js";
import type { SelfTestReport } from "../engine/golden.js";
import type { RGBAPixels } from "../engine/image.js";
import type { LoadProgress } from "../engine/manifest.js";
import { resultFile } from "../engine/result.js";
import type { BackendName } from "../engine/session.js";
import { FileSource, UrlSource, type BundleSource } from "../engine/source.js";
import { decodeImage } from "./decode.js";
import { capabilities, deviceInfo, measureMemory, sampledMemory, sampleMemory, type Capabilities } from "./device.js";
import { ort, WASM_PATHS } from "./ort.js";

export interface LoadOptions { backend?: BackendName; threads?: number; force?: boolean; onProgress?: LoadProgress }

export class App {
  engine: Engine | null = null;
  image: RGBAPixels | null = null;
  caps: Capabilities | null = null;
  memory: { bytes: number | null; source: string } = { bytes: null, source: "none (no run yet)" };
  private page = { bundle_download_ms: 0, bundle_verify_ms: 0, session_load_ms: 0 };

  async init(): Promise<Capabilities> {
    this.caps = await capabilities();
    return this.caps;
  }

  defaultThreads(): number {
    return this.caps?.isolated ? Math.min(4, this.caps.cores) : 1;
  }

  async load(source: string | BundleSource | File[], options: LoadOptions = {}): Promise<Engine> {
    const src = typeof source === "string" ? new UrlSource(new URL(source, document.baseURI).href)
      : Array.isArray(source) ? new FileSource(source) : source;
    const backend = options.backend ?? "wasm";
    if (backend === "webgpu" && !this.caps?.webgpu) {
      throw new EngineError("input", "this browser offers no WebGPU adapter",
        "choose the wasm backend (WebGPU needs a secure context and a supported GPU)");
    }
    await this.engine?.model.release();
    this.engine = null;
    const threads = this.caps?.isolated ? (options.threads || this.defaultThreads()) : 1;
    const engine = await Engine.open(ort, src, { backend, threads, wasmPaths: WASM_PATHS,
      defaultThreads: this.defaultThreads(), deviceMemoryGiB: this.caps?.deviceMemoryGiB ?? undefined,
      force: options.force, onProgress: options.onProgress });
    this.page = { bundle_download_ms: engine.bundle.downloadMs, bundle_verify_ms: engine.bundle.verifyMs,
      session_load_ms: engine.sessionLoadMs };
    this.engine = engine;
    return engine;
  }

  private need(): Engine {
    if (!this.engine) throw new EngineError("input", "no bundle is loaded", "load a bundle first (URL, folder or files)");
    return this.engine;
  }

  async setImage(bytes: Uint8Array, name: string): Promise<RGBAPixels> {
    this.image = await decodeImage(bytes, name);
    return this.image;
  }

  private needImage(image?: RGBAPixels | null): RGBAPixels {
    const chosen = image ?? this.image;
    if (!chosen) throw new EngineError("input", "no image is chosen", "pick a photo from the gallery or the camera");
    return chosen;
  }

  async caption(options: { prompt?: string; maxNewTokens?: number; ignoreEos?: boolean;
    onText?: (piece: string) => void; }, image?: RGBAPixels | null): Promise<CaptionOutput> {
    const out = await this.need().caption(this.needImage(image), { ...options,
      onText: (piece) => { sampleMemory(); options.onText?.(piece); } });
    sampleMemory();
    return out;
  }

  async classify(labels: string[], image?: RGBAPixels | null): Promise<ClassifyOutput> {
    const [out] = await this.need().classify([this.needImage(image)], labels);
    sampleMemory();
    return out;
  }

  async selftest(): Promise<SelfTestReport> {
    const report = await this.need().selftest((bytes, name) => decodeImage(bytes, name));
    sampleMemory();
    return report;
  }

  /** The memory figure, measured after the run (slow in an isolated page: ~12 s). */
  async measureMemory(): Promise<void> {
    this.memory = await measureMemory();
  }

  /** The sampled figure only (instant), for runs that skip the slow measurement. */
  quickMemory(): void {
    this.memory = sampledMemory();
  }

  result(): Record<string, unknown> {
    const engine = this.need();
    const device = deviceInfo(engine.backend, engine.threads, this.memory, this.caps!);
    return resultFile(engine, device, this.page);
  }
}
