/** The engine's front door, shared by the page, the automation API and the Node CLI: open a bundle from any source
 * (manifest first: schema, target and memory checked before any model file is read), then caption / ask / classify
 * / self-test, keeping what each run measured for the result file. */

import { DualEncoder } from "./dual_encoder.js";
import { EngineError } from "./errors.js";
import { componentFigures, generationFigures } from "./figures.js";
import { selfTestDual, selfTestVLM, type ImageDecoder, type SelfTestReport } from "./golden.js";
import type { RGBAPixels } from "./image.js";
import { checkFits, loadFiles, readManifest, type LoadedBundle, type LoadProgress, type MemoryEstimate } from "./manifest.js";
import { configureOrt, type BackendOptions, type Ort } from "./session.js";
import type { BundleSource } from "./source.js";
import { DEFAULT_CAPTION_PROMPT, VisionLanguageModel, type GenerationResult } from "./vlm.js";

export interface OpenOptions extends BackendOptions {
  deviceMemoryGiB?: number; // navigator.deviceMemory, when the browser reports it
  force?: boolean; // load even when the memory estimate says it will not fit
  defaultThreads?: number;
  onProgress?: LoadProgress;
}

export interface CaptionOptions {
  prompt?: string;
  maxNewTokens?: number;
  ignoreEos?: boolean; // always generate maxNewTokens (benchmarks)
  onText?: (piece: string) => void;
}

export interface CaptionOutput {
  text: string;
  token_ids: number[];
  stop_reason: string;
  prompt_tokens: number;
  figures: Record<string, number>;
  backend: string;
  threads: number;
}

export interface ClassifyOutput { labels: string[]; probabilities: number[]; ranked: { label: string; score: number }[];
  figures: Record<string, number>; backend: string; threads: number }

export class Engine {
  readonly runs: GenerationResult[] = [];

  private constructor(readonly bundle: LoadedBundle, readonly model: VisionLanguageModel | DualEncoder,
    readonly threads: number, readonly estimate: MemoryEstimate, readonly sessionLoadMs: number) {}

  static async open(ort: Ort, source: BundleSource, options: OpenOptions = {}): Promise<Engine> {
    const { manifest, bytes } = await readManifest(source);
    const estimate = options.force ? checkFits(manifest) : checkFits(manifest, options.deviceMemoryGiB);
    const bundle = await loadFiles(source, manifest, bytes, options.onProgress);
    const threads = configureOrt(ort, options, options.defaultThreads ?? 1);
    const started = performance.now();
    const model = manifest.task === "image_text_to_text" ? await VisionLanguageModel.load(ort, bundle, options)
      : await DualEncoder.load(ort, bundle, options);
    for (const comp of Object.values(manifest.components)) { // the sessions hold the weights now
      bundle.files.delete(comp.file);
      if (comp.external_data) bundle.files.delete(comp.external_data);
    }
    return new Engine(bundle, model, threads, estimate, performance.now() - started);
  }

  get kind(): "vlm" | "dual" {
    return this.model instanceof VisionLanguageModel ? "vlm" : "dual";
  }

  get backend(): string {
    return [...new Set(Object.values(this.model.sessions).map((s) => s.backend))].join("; ");
  }

  private vlm(): VisionLanguageModel {
    if (!(this.model instanceof VisionLanguageModel)) {
      throw new EngineError("input", `this is a ${this.bundle.manifest.task} bundle, not a VLM`,
        "caption and ask need a VLM bundle; use classify for CLIP/SigLIP bundles");
    }
    return this.model;
  }

  async caption(image: RGBAPixels, options: CaptionOptions = {}): Promise<CaptionOutput> {
    const model = this.vlm();
    const result = await model.generate(image, options.prompt ?? DEFAULT_CAPTION_PROMPT,
      { maxNewTokens: options.maxNewTokens ?? 32, ignoreEos: options.ignoreEos ?? false }, options.onText);
    this.runs.push(result);
    return { text: result.text, token_ids: result.tokenIds, stop_reason: result.stopReason,
      prompt_tokens: result.promptTokens, figures: generationFigures(result), backend: this.backend,
      threads: this.threads };
  }

  async classify(images: RGBAPixels[], labels: string[]): Promise<ClassifyOutput[]> {
    if (!(this.model instanceof DualEncoder)) {
      throw new EngineError("input", `this is a ${this.bundle.manifest.task} bundle, not a CLIP/SigLIP dual encoder`,
        "classify needs a CLIP or SigLIP bundle; use caption or ask for a VLM bundle");
    }
    const image = this.model.sessions.image_encoder, text = this.model.sessions.text_encoder;
    const before = [image.times.length, text.times.length];
    const out = await this.model.classify(images, labels);
    const figures = { preprocess_ms: out.preprocessMs / images.length,
      image_encode_ms: image.times.slice(before[0]).reduce((a, b) => a + b, 0) / images.length,
      text_encode_ms: text.times.slice(before[1]).reduce((a, b) => a + b, 0) };
    return out.probabilities.map((row, i) => ({ labels: out.labels, probabilities: row, ranked: out.ranked[i], figures,
      backend: this.backend, threads: this.threads }));
  }

  async selftest(decode: ImageDecoder): Promise<SelfTestReport> {
    return this.model instanceof VisionLanguageModel ? selfTestVLM(this.model, decode) : selfTestDual(this.model, decode);
  }

  componentFigures() {
    return componentFigures(this.model.sessions);
  }
}
