/** One component of a bundle on onnxruntime-web (the ort module is passed in, so the page and Node pick their
 * build), with its run times recorded. Backend: wasm (threads when the page allows) or WebGPU, falling back to wasm
 * with the reason recorded when WebGPU cannot start; `backend` says what actually ran. */

import type * as OrtModule from "onnxruntime-web";

import { EngineError } from "./errors.js";
import type { ComponentSpec, LoadedBundle } from "./manifest.js";
import { fileBytes } from "./manifest.js";
import type { Tensor } from "./tensor.js";

export type Ort = typeof OrtModule;
export type BackendName = "wasm" | "webgpu";

export interface BackendOptions {
  backend?: BackendName;
  threads?: number; // wasm threads; 0 = the engine's default
  wasmPaths?: string; // where the ort-wasm-*.{mjs,wasm} files are served (the page sets its own path)
  proxy?: boolean; // wasm in a worker (browser only)
}

export function configureOrt(ort: Ort, options: BackendOptions, defaultThreads: number): number {
  const env = ort.env.wasm;
  if (options.wasmPaths) env.wasmPaths = options.wasmPaths;
  const threads = options.threads && options.threads > 0 ? options.threads : defaultThreads;
  env.numThreads = threads;
  if (options.proxy !== undefined) env.proxy = options.proxy;
  ort.env.logLevel = "error";
  return threads;
}

export class ComponentSession {
  readonly times: number[] = [];
  readonly labels: string[] = []; // per run: "" or what the caller called it ("prefill", "decode_step")

  private constructor(readonly name: string, private readonly ort: Ort, private readonly session: OrtModule.InferenceSession,
    readonly backend: string, readonly loadMs: number) {}

  static async open(ort: Ort, bundle: LoadedBundle, name: string, options: BackendOptions): Promise<ComponentSession> {
    const spec: ComponentSpec | undefined = bundle.manifest.components[name];
    if (!spec) {
      throw new EngineError("bundle", `bundle has no component '${name}' (it has: ` +
        `${Object.keys(bundle.manifest.components).sort().join(", ")})`, "re-export the model with pocketvlm export");
    }
    const model = fileBytes(bundle, spec.file);
    const base: OrtModule.InferenceSession.SessionOptions = { graphOptimizationLevel: "all" };
    if (spec.external_data) {
      base.externalData = [{ path: spec.external_data, data: fileBytes(bundle, spec.external_data) }];
    }
    const started = performance.now();
    if (options.backend === "webgpu") {
      try {
        const session = await ort.InferenceSession.create(model, { ...base, executionProviders: ["webgpu"] });
        return new ComponentSession(name, ort, session, "webgpu", performance.now() - started);
      } catch (error) {
        const session = await ort.InferenceSession.create(model, { ...base, executionProviders: ["wasm"] });
        const why = String(error).split("\n")[0].slice(0, 160);
        return new ComponentSession(name, ort, session, `wasm (webgpu failed: ${why})`, performance.now() - started);
      }
    }
    const session = await ort.InferenceSession.create(model, { ...base, executionProviders: ["wasm"] });
    return new ComponentSession(name, ort, session, "wasm", performance.now() - started);
  }

  get inputNames(): readonly string[] {
    return this.session.inputNames;
  }

  async run(feeds: Record<string, Tensor>, label = ""): Promise<Record<string, Tensor>> {
    const ortFeeds: Record<string, OrtModule.Tensor> = {};
    for (const name of this.session.inputNames) {
      const t = feeds[name];
      if (!t) throw new EngineError("bundle", `no value for ${this.name} input '${name}'`, "re-export the bundle");
      ortFeeds[name] = new this.ort.Tensor(t.dtype, t.data, t.dims);
    }
    const started = performance.now();
    const out = await this.session.run(ortFeeds);
    this.times.push(performance.now() - started);
    this.labels.push(label);
    const result: Record<string, Tensor> = {};
    for (const [name, value] of Object.entries(out)) {
      result[name] = { dtype: value.type as Tensor["dtype"], dims: [...value.dims], data: value.data as Tensor["data"] };
    }
    return result;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
