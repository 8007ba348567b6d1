/**
 * Tokenization from the bundle's tokenizer.json (@huggingface/tokenizers), with the rules of runtime/text.py:
 * `encodePlain` adds no special tokens (chat templates carry their own); `encode` (dual encoders) adds them,
 * truncates to `max_length` keeping the special tokens (as the Rust tokenizers' truncation does) and pads per the
 * manifest (`longest` or `max_length`, right side). `decode` skips special tokens and does no clean-up.
 */

import { Tokenizer } from "@huggingface/tokenizers";

import { EngineError } from "./errors.js";
import type { Tensor } from "./tensor.js";

export interface TextConfig { file: string; max_length: number; padding: string; pad_token_id: number }

type PostProcess = (tokens: string[], pair: null, addSpecial: boolean) => { tokens: string[] };

export class TextTokenizer {
  readonly config: TextConfig;
  private readonly tok: Tokenizer;
  private readonly unk: number;

  constructor(json: unknown, config: TextConfig) {
    try {
      this.tok = new Tokenizer(json as object, {});
    } catch (error) {
      throw new EngineError("bundle", `cannot load tokenizer ${config.file}: ${String(error)}`, "re-export the bundle");
    }
    this.config = config;
    const model = (json as { model?: { unk_token?: string } }).model;
    this.unk = (model?.unk_token ? this.tok.token_to_id(model.unk_token) : undefined) ?? 0;
  }

  private ids(tokens: string[]): number[] {
    return tokens.map((t) => this.tok.token_to_id(t) ?? this.unk);
  }

  /** One already-templated prompt -> ids, no special tokens added, truncated to max_length. */
  encodePlain(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids.slice(0, this.config.max_length);
  }

  /** One text with the post-processor's special tokens, truncated to max_length with the specials kept. */
  encodeOne(text: string): number[] {
    const full = this.tok.encode(text).ids;
    if (full.length <= this.config.max_length) return full;
    const raw = this.tok.tokenize(text, { add_special_tokens: false });
    const added = full.length - raw.length;
    const kept = raw.slice(0, Math.max(this.config.max_length - added, 0));
    const post = this.tok.post_processor as unknown as PostProcess | null;
    return this.ids(post ? post(kept, null, true).tokens : kept);
  }

  /** Texts -> input_ids and attention_mask, int64 [batch, length]. */
  encode(texts: string[]): { input_ids: Tensor; attention_mask: Tensor } {
    if (!texts.length) throw new EngineError("input", "no text given", "pass at least one non-empty text or label");
    const rows = texts.map((t) => this.encodeOne(t));
    const length = this.config.padding === "max_length" ? this.config.max_length : Math.max(...rows.map((r) => r.length));
    const ids = new BigInt64Array(texts.length * length).fill(BigInt(this.config.pad_token_id));
    const mask = new BigInt64Array(texts.length * length);
    rows.forEach((row, r) => row.forEach((id, i) => {
      ids[r * length + i] = BigInt(id);
      mask[r * length + i] = 1n;
    }));
    const dims = [texts.length, length];
    return { input_ids: { dtype: "int64", dims, data: ids }, attention_mask: { dtype: "int64", dims, data: mask } };
  }

  decode(ids: readonly number[]): string {
    if (!ids.length) return "";
    return this.tok.decode([...ids], { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  stream(maxHeld = 8): TextStream {
    return new TextStream((ids) => this.decode(ids), maxHeld);
  }
}

const REPLACEMENT = "\ufffd";

/**
 * Incremental detokenisation, the algorithm of runtime/text.py's TextStream: a bounded window of the last emitted
 * piece's ids (context) and the ids not emitted yet; a new suffix is emitted once it does not end in U+FFFD;
 * text held back for more than `maxHeld` tokens is emitted as it stands, or dropped when it adds nothing.
 */
export class TextStream {
  emitted = 0;
  private window: number[] = [];
  private read = 0;
  private contextText: string | null = "";

  constructor(private readonly decode: (ids: number[]) => string, private readonly maxHeld = 8) {}

  push(token: number): string {
    this.window.push(token);
    if (this.contextText === null) this.contextText = this.decode(this.window.slice(0, this.read));
    const text = this.decode(this.window);
    const grew = text.length > this.contextText.length;
    if (!grew || text.endsWith(REPLACEMENT)) {
      if (this.window.length - this.read <= this.maxHeld) return "";
      if (!grew) {
        this.window.length = this.read;
        return "";
      }
    }
    const piece = text.slice(this.contextText.length);
    this.window = this.window.slice(this.read);
    this.read = this.window.length;
    this.contextText = null;
    this.emitted += piece.length;
    return piece;
  }

  /** What is left of the full decode after what push emitted. */
  finish(fullText: string): string {
    return fullText.slice(this.emitted);
  }
}
