/** Embeddings and zero-shot classification over a CLIP-style bundle (image_encoder + text_encoder), as
 * runtime/dual_encoder.py: prompts from the manifest's template, tokenizer padding per the manifest, L2
 * normalisation, scaled logits (+ bias), softmax (CLIP) or sigmoid (SigLIP). */

import { EngineError } from "./errors.js";
import { checkPixels, DEFAULT_MAX_PIXELS, outputSize, preprocessInto, type ImagePreprocessConfig,
  type RGBAPixels } from "./image.js";
import { fileText, type LoadedBundle } from "./manifest.js";
import { ComponentSession, type BackendOptions, type Ort } from "./session.js";
import { f32, type Tensor } from "./tensor.js";
import { TextTokenizer } from "./text.js";

export interface Prediction { label: string; score: number }

export interface Scoring { activation: string; logitScale: number; logitBias: number; promptTemplate: string }

export function l2Normalize(t: Tensor): Float32Array[] {
  const [rows, dim] = t.dims;
  const data = t.data as Float32Array;
  const out: Float32Array[] = [];
  for (let r = 0; r < rows; r++) {
    const row = data.slice(r * dim, (r + 1) * dim);
    const norm = Math.fround(Math.sqrt(row.reduce((s, v) => s + v * v, 0)));
    out.push(row.map((v) => v / Math.max(norm, 1e-12)));
  }
  return out;
}

export class DualEncoder {
  readonly tokenizer: TextTokenizer;
  readonly preprocess: ImagePreprocessConfig;
  readonly scoring: Scoring;
  maxPixels = DEFAULT_MAX_PIXELS;

  private constructor(readonly bundle: LoadedBundle, readonly sessions: Record<string, ComponentSession>) {
    const m = bundle.manifest;
    if (!m.preprocessing || !m.tokenizer || !m.zero_shot) {
      throw new EngineError("input", "bundle manifest has no preprocessing / tokenizer / zero_shot block: not a " +
        "dual-encoder bundle", "use a CLIP or SigLIP bundle for classify");
    }
    this.preprocess = m.preprocessing.image as unknown as ImagePreprocessConfig;
    this.tokenizer = new TextTokenizer(JSON.parse(fileText(bundle, m.tokenizer.file)), m.tokenizer);
    const zs = m.zero_shot;
    this.scoring = { activation: zs.activation, logitScale: Number(zs.logit_scale), logitBias: Number(zs.logit_bias ?? 0),
      promptTemplate: zs.prompt_template };
  }

  static async load(ort: Ort, bundle: LoadedBundle, options: BackendOptions = {}): Promise<DualEncoder> {
    if (bundle.manifest.task !== "zero_shot_image_classification") {
      throw new EngineError("input", `this is a ${bundle.manifest.task} bundle, not a CLIP/SigLIP dual encoder`,
        "classify needs a CLIP or SigLIP bundle; use caption or ask for a VLM bundle");
    }
    if ("image_frontend" in bundle.manifest.components) {
      throw new EngineError("input", "this bundle's image side is split (image_frontend + image_transformer), which "
        + "the web demo does not chain", "export the bundle for the web demo without --split-vision");
    }
    const sessions: Record<string, ComponentSession> = {};
    for (const name of ["image_encoder", "text_encoder"]) {
      sessions[name] = await ComponentSession.open(ort, bundle, name, options);
    }
    return new DualEncoder(bundle, sessions);
  }

  pixelValues(images: RGBAPixels[]): Tensor {
    const [h, w] = outputSize(this.preprocess);
    const plane = 3 * h * w;
    const data = new Float32Array(images.length * plane);
    images.forEach((image, i) => {
      checkPixels(image.width, image.height, this.maxPixels);
      preprocessInto(this.preprocess, image, data, i * plane);
    });
    return f32(data, [images.length, 3, h, w]);
  }

  async imageFeatures(pixelValues: Tensor): Promise<Tensor> {
    return (await this.sessions.image_encoder.run({ pixel_values: pixelValues })).image_embeds;
  }

  async textFeatures(texts: string[]): Promise<Tensor> {
    return (await this.sessions.text_encoder.run(this.tokenizer.encode(texts))).text_embeds;
  }

  prompts(labels: string[], template = this.scoring.promptTemplate): string[] {
    if (!template.includes("{}")) {
      throw new EngineError("input", `prompt template '${template}' has no '{}' placeholder`,
        "use a template like 'a photo of {}.'");
    }
    return labels.map((label) => template.split("{}").join(label));
  }

  /** [images][texts] probabilities (float64) from normalised embeddings. */
  probabilities(imageEmbeds: Float32Array[], textEmbeds: Float32Array[]): number[][] {
    const { logitScale, logitBias, activation } = this.scoring;
    return imageEmbeds.map((img) => {
      const logits = textEmbeds.map((txt) => img.reduce((s, v, i) => s + v * txt[i], 0) * logitScale + logitBias);
      if (activation === "sigmoid") return logits.map((z) => 1 / (1 + Math.exp(-z)));
      const max = Math.max(...logits);
      const exps = logits.map((z) => Math.exp(z - max));
      const sum = exps.reduce((a, b) => a + b, 0);
      return exps.map((e) => e / sum);
    });
  }

  static checkLabels(labels: string[]): string[] {
    const clean = labels.map((l) => l.trim());
    if (!clean.length || clean.some((l) => !l)) {
      throw new EngineError("input", "labels must be non-empty", "pass labels like 'a cat,a dog'");
    }
    if (new Set(clean).size !== clean.length) throw new EngineError("input", "labels contain duplicates", "pass each label once");
    return clean;
  }

  /** Zero-shot classification; per image, the probabilities in label order and the labels sorted by score. */
  async classify(images: RGBAPixels[], labels: string[], template?: string):
    Promise<{ labels: string[]; probabilities: number[][]; ranked: Prediction[][]; preprocessMs: number }> {
    const clean = DualEncoder.checkLabels(labels);
    const text = l2Normalize(await this.textFeatures(this.prompts(clean, template)));
    const started = performance.now();
    const pixels = this.pixelValues(images);
    const preprocessMs = performance.now() - started;
    const probabilities = this.probabilities(l2Normalize(await this.imageFeatures(pixels)), text);
    const ranked = probabilities.map((row) => row.map((score, i) => ({ label: clean[i], score }))
      .sort((a, b) => b.score - a.score));
    return { labels: clean, probabilities, ranked, preprocessMs };
  }

  async release(): Promise<void> {
    for (const session of Object.values(this.sessions)) await session.release();
  }
}
