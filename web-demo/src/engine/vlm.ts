/** Captioning and question answering over a VLM bundle (vision_encoder + text_decoder), as runtime/vlm.py: the
 * chat template, image-placeholder expansion, the vision encoder, and the generation loop over the fixed KV cache.
 * Async throughout; the loop yields to the event loop between tokens so a page never freezes. */

import type { Processed, VisionAdapter } from "./adapter.js";
import { EngineError } from "./errors.js";
import { Idefics3Adapter, type Idefics3Config } from "./idefics3.js";
import { checkPixels, DEFAULT_MAX_PIXELS, type RGBAPixels } from "./image.js";
import { fileText, type LoadedBundle } from "./manifest.js";
import { QwenAdapter, type QwenConfig } from "./qwen_vl.js";
import { ComponentSession, type BackendOptions, type Ort } from "./session.js";
import { generationConfig, KVCache, Sampler, type GenerationConfig } from "./generation.js";
import { ChatTemplate } from "./template.js";
import { i64From, sliceAxis, zerosFor, type Tensor } from "./tensor.js";
import { TextTokenizer } from "./text.js";

export const DEFAULT_CAPTION_PROMPT = "Describe this image.";

type AdapterFactory = (config: Record<string, unknown>, special: Record<string, unknown>) => VisionAdapter;
const ADAPTERS: Record<string, AdapterFactory> = {
  idefics3: (c, s) => new Idefics3Adapter(c as unknown as Idefics3Config, s) as unknown as VisionAdapter,
  qwen2_vl: (c, s) => new QwenAdapter(c as unknown as QwenConfig, s) as unknown as VisionAdapter,
};

export interface Timings {
  preprocess_ms: number;
  image_encode_ms: number;
  prefill_ms: number;
  decode_ms: number;
  decode_tokens: number;
  time_to_first_token_ms: number; // image encode + prefill, as runtime/bench.py
}

export interface GenerationResult {
  text: string;
  tokenIds: number[];
  promptTokens: number;
  stopReason: "eos" | "stop_token" | "max_new_tokens" | "forced";
  timings: Timings;
  logits?: Float32Array[]; // per step, when teacher-forced
}

export interface Prepared { inputIds: number[]; processed: Processed | null; text: string; preprocessMs: number }

export interface StepHooks {
  onToken?: (token: number) => void | Promise<void>;
  forced?: number[];
}

const nextTick = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

export class VisionLanguageModel {
  readonly tokenizer: TextTokenizer;
  readonly template: ChatTemplate;
  readonly adapter: VisionAdapter;
  readonly eosIds: Set<number>;
  readonly maxContext: number;
  maxPixels = DEFAULT_MAX_PIXELS;

  private constructor(readonly bundle: LoadedBundle, readonly sessions: Record<string, ComponentSession>) {
    const m = bundle.manifest;
    const image = m.preprocessing?.image as Record<string, unknown> | undefined;
    const factory = image && ADAPTERS[image.kind as string];
    if (!image || !factory) {
      throw new EngineError("bundle", `image preprocessing '${String(image?.kind)}' is not supported by this web engine`,
        "update the web demo");
    }
    if (!m.tokenizer || !m.chat_template || !m.special_tokens || !m.generation || !m.decoder) {
      throw new EngineError("bundle", "the VLM manifest lacks tokenizer / chat_template / special_tokens / generation / " +
        "decoder", "re-export the bundle with `pocketvlm export`");
    }
    this.tokenizer = new TextTokenizer(JSON.parse(fileText(bundle, m.tokenizer.file)), m.tokenizer);
    this.template = new ChatTemplate(fileText(bundle, m.chat_template));
    this.adapter = factory(image, m.special_tokens);
    this.eosIds = new Set(m.generation.eos_token_ids);
    this.maxContext = m.generation.max_context;
  }

  static async load(ort: Ort, bundle: LoadedBundle, options: BackendOptions = {}): Promise<VisionLanguageModel> {
    if (bundle.manifest.task !== "image_text_to_text") {
      throw new EngineError("input", `this is a ${bundle.manifest.task} bundle, not a VLM`,
        "caption and ask need a VLM bundle (qwen2_vl, idefics3, ...); use classify for CLIP/SigLIP bundles");
    }
    const split = "vision_frontend" in bundle.manifest.components;
    if (split) {
      throw new EngineError("target", "split vision bundles (vision_frontend + vision_transformer) are not run by the " +
        "web engine", "export without --split-vision for the browser");
    }
    const sessions: Record<string, ComponentSession> = {};
    for (const name of ["vision_encoder", "text_decoder"]) {
      sessions[name] = await ComponentSession.open(ort, bundle, name, options);
    }
    return new VisionLanguageModel(bundle, sessions);
  }

  render(prompt: string, withImage = true): string {
    return this.template.render(prompt, withImage);
  }

  prepare(image: RGBAPixels | null, prompt: string): Prepared {
    if (!prompt.trim()) throw new EngineError("input", "the prompt is empty", "type a question or instruction");
    const started = performance.now();
    if (!image) {
      const text = this.render(prompt, false);
      return { inputIds: this.tokenizer.encodePlain(text), processed: null, text, preprocessMs: 0 };
    }
    checkPixels(image.width, image.height, this.maxPixels);
    const processed = this.adapter.preprocess(image);
    const text = this.adapter.expand(this.render(prompt), processed);
    return { inputIds: this.tokenizer.encodePlain(text), processed, text, preprocessMs: performance.now() - started };
  }

  /** -> image_embeds (and deepstack_embeds); a text-only prompt gets the one unused zero row the graph needs. */
  async encodeImage(processed: Processed | null): Promise<Record<string, Tensor>> {
    if (!processed) {
      const spec = this.bundle.manifest.components.text_decoder;
      return Object.fromEntries(spec.inputs.filter((t) => t.name === "image_embeds" || t.name === "deepstack_embeds")
        .map((t) => [t.name, zerosFor(t)]));
    }
    return this.sessions.vision_encoder.run(processed.feeds);
  }

  private checkContext(prompt: number, config: GenerationConfig): void {
    if (prompt + config.maxNewTokens > this.maxContext) {
      throw new EngineError("input", `prompt of ${prompt} tokens + ${config.maxNewTokens} new tokens exceeds the ` +
        `model's context of ${this.maxContext}`, "shorten the prompt or lower max new tokens");
    }
  }

  private newCache(capacity: number): KVCache {
    const d = this.bundle.manifest.decoder!;
    return new KVCache(d.num_layers, d.kv_heads, d.head_dim, capacity);
  }

  async generateIds(prepared: Prepared, options: Partial<GenerationConfig> = {}, hooks: StepHooks = {}):
    Promise<GenerationResult> {
    const config = generationConfig(options);
    const { inputIds, processed } = prepared;
    this.checkContext(inputIds.length, config);
    let started = performance.now();
    let vision = await this.encodeImage(processed);
    const imageEncodeMs = processed ? performance.now() - started : 0;
    const { positions, delta } = this.adapter.positions(inputIds, processed);
    const decoder = this.sessions.text_decoder;
    const cache = this.newCache(inputIds.length + config.maxNewTokens);
    const sampler = new Sampler(config);
    const stops = new Set([...this.eosIds, ...config.stopTokenIds]);
    let stepIds: Tensor = i64From(inputIds, [1, inputIds.length]);
    let stepPositions = positions;
    const tokens: number[] = [], logits: Float32Array[] = [];
    let reason: GenerationResult["stopReason"] = "max_new_tokens";
    let prefillMs = 0;
    started = performance.now();
    while (tokens.length < config.maxNewTokens) {
      const outputs = await decoder.run({ input_ids: stepIds, position_ids: stepPositions, ...vision,
        attention_mask: cache.attentionMask(stepIds.dims[1]), ...cache.feeds() }, tokens.length ? "decode_step" : "prefill");
      cache.append(outputs, stepIds.dims[1]);
      if (!tokens.length) {
        prefillMs = performance.now() - started;
        vision = this.decodeStepVision(vision);
        started = performance.now();
      }
      const stepLogits = outputs.logits.data as Float32Array;
      const token = sampler.choose(stepLogits);
      tokens.push(token);
      await hooks.onToken?.(token);
      let next = token;
      if (hooks.forced) {
        logits.push(stepLogits.slice());
        if (tokens.length >= hooks.forced.length) {
          reason = "forced";
          break;
        }
        next = hooks.forced[tokens.length - 1];
      } else if (stops.has(token) && !config.ignoreEos) {
        reason = this.eosIds.has(token) ? "eos" : "stop_token";
        break;
      }
      stepIds = i64From([next], [1, 1]);
      stepPositions = this.adapter.stepPosition(cache.filled + delta);
      await nextTick();
    }
    const decodeMs = performance.now() - started;
    const text = this.tokenizer.decode(tokens.filter((t) => !stops.has(t)));
    const timings: Timings = { preprocess_ms: prepared.preprocessMs, image_encode_ms: imageEncodeMs,
      prefill_ms: prefillMs, decode_ms: decodeMs, decode_tokens: Math.max(tokens.length - 1, 0),
      time_to_first_token_ms: imageEncodeMs + prefillMs };
    return { text, tokenIds: tokens, promptTokens: inputIds.length, stopReason: reason, timings,
      ...(hooks.forced ? { logits } : {}) };
  }

  /** Decode steps carry no image tokens; the graph still needs one (unused) row. */
  private decodeStepVision(vision: Record<string, Tensor>): Record<string, Tensor> {
    const out: Record<string, Tensor> = { image_embeds: sliceAxis(vision.image_embeds, 0, 1) };
    if (vision.deepstack_embeds) out.deepstack_embeds = sliceAxis(vision.deepstack_embeds, 1, 1);
    return out;
  }

  /** Caption or answer; `onText` receives the text as it grows (the pieces add up to result.text). */
  async generate(image: RGBAPixels | null, prompt = DEFAULT_CAPTION_PROMPT, options: Partial<GenerationConfig> = {},
    onText?: (piece: string) => void): Promise<GenerationResult> {
    const prepared = this.prepare(image, prompt);
    const stream = this.tokenizer.stream();
    const stops = new Set([...this.eosIds, ...(options.stopTokenIds ?? [])]);
    const result = await this.generateIds(prepared, options, {
      onToken: (token) => {
        const piece = stops.has(token) ? "" : stream.push(token);
        if (piece) onText?.(piece);
      },
    });
    const rest = stream.finish(result.text);
    if (rest) onText?.(rest);
    return result;
  }

  async release(): Promise<void> {
    for (const session of Object.values(this.sessions)) await session.release();
  }
}
