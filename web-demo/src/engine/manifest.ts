/**
 * The bundle contract, read as runtime/manifest.py reads it: schema version check (a newer one is refused), the
 * structure the engine relies on, and the sha256 and size of every file in `files` (component files included), so
 * a tampered or half-copied bundle never runs. Also what the browser adds: the target must be one onnxruntime-web
 * runs, and a memory estimate made from the manifest before any model file is downloaded.
 */

import { EngineError } from "./errors.js";
import { sha256Hex } from "./hash.js";
import type { BundleSource } from "./source.js";

export const SCHEMA_VERSION = 1;
export const MANIFEST_NAME = "manifest.json";
const WASM_LIMIT = 4 * 1024 ** 3;
const RUNNABLE_TARGETS = ["onnx"];
const FIX_EXPORT = "re-export the bundle with `pocketvlm export`";

export interface TensorSpec { name: string; dtype: string; shape: (number | string)[] }

export interface ComponentSpec {
  file: string;
  sha256: string;
  bytes: number;
  format: string;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  quantization: { method: string; [key: string]: unknown };
  external_data?: string;
}

export interface FileEntry { path: string; sha256: string; bytes: number }

/** The manifest fields the engine reads; the rest is kept as is. */
export interface Manifest {
  schema_version: number;
  pocketvlm_version?: string;
  family: string;
  target: string;
  task?: string;
  components: Record<string, ComponentSpec>;
  files: FileEntry[];
  preprocessing?: { image: Record<string, unknown> };
  tokenizer?: { file: string; max_length: number; padding: string; pad_token_id: number };
  chat_template?: string;
  special_tokens?: Record<string, unknown>;
  generation?: { eos_token_ids: number[]; max_context: number };
  decoder?: { num_layers: number; kv_heads: number; head_dim: number; [key: string]: unknown };
  zero_shot?: { activation: string; logit_scale: number; logit_bias: number | null; prompt_template: string };
  golden?: { file: string };
  [key: string]: unknown;
}

const REQUIRED_TOP = ["schema_version", "family", "target", "source", "components", "files"];
const REQUIRED_COMPONENT = ["file", "sha256", "bytes", "format", "inputs", "outputs", "quantization"];

function checkStructure(m: Record<string, unknown>, where: string): void {
  const missing = REQUIRED_TOP.filter((k) => !(k in m));
  if (missing.length) throw new EngineError("bundle", `${where} lacks required keys: ${missing.join(", ")}`, FIX_EXPORT);
  const components = m.components as Record<string, Record<string, unknown>>;
  if (typeof components !== "object" || !components || !Object.keys(components).length) {
    throw new EngineError("bundle", `${where} lists no components`, FIX_EXPORT);
  }
  for (const [name, comp] of Object.entries(components)) {
    const gaps = REQUIRED_COMPONENT.filter((k) => !(k in comp));
    if (gaps.length) throw new EngineError("bundle", `${where}: component '${name}' lacks ${gaps.join(", ")}`, FIX_EXPORT);
  }
  if (!Array.isArray(m.files)) throw new EngineError("bundle", `${where}: 'files' is not a list`, FIX_EXPORT);
  for (const entry of m.files as FileEntry[]) {
    if (!entry || typeof entry.path !== "string" || typeof entry.sha256 !== "string" || !("bytes" in entry)) {
      throw new EngineError("bundle", `${where}: malformed entry in 'files': ${JSON.stringify(entry)}`, FIX_EXPORT);
    }
    if (entry.path.startsWith("/") || entry.path.split("/").includes("..")) {
      throw new EngineError("bundle", `${where}: file path escapes the bundle: ${entry.path}`, FIX_EXPORT);
    }
  }
}

/** manifest.json bytes -> checked manifest (schema version first, then structure, then the target). */
export function parseManifest(bytes: Uint8Array, where = MANIFEST_NAME): Manifest {
  let data: unknown;
  try {
    data = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (error) {
    throw new EngineError("bundle", `${where} is not valid JSON (${String(error)})`, FIX_EXPORT);
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new EngineError("bundle", `${where} is not a JSON object`, FIX_EXPORT);
  }
  const m = data as Record<string, unknown>;
  const version = m.schema_version;
  if (typeof version !== "number" || !Number.isInteger(version)) {
    throw new EngineError("bundle", `${where} has no integer schema_version`, FIX_EXPORT);
  }
  if (version > SCHEMA_VERSION) {
    throw new EngineError("version",
      `bundle schema version ${version} is newer than this web engine understands (${SCHEMA_VERSION})`,
      "update the web demo (rebuild web-demo from a newer pocketvlm) or re-export with this version");
  }
  if (version < 1) throw new EngineError("version", `bundle schema version ${version} is invalid`, FIX_EXPORT);
  checkStructure(m, where);
  const manifest = m as Manifest;
  checkTarget(manifest);
  return manifest;
}

function checkTarget(manifest: Manifest): void {
  if (!RUNNABLE_TARGETS.includes(manifest.target)) {
    throw new EngineError("target",
      `this is a ${manifest.target} bundle; the browser runs ONNX bundles only (onnxruntime-web)`,
      `export an ONNX bundle: pocketvlm export --target onnx (${manifest.target} bundles are for the native apps)`);
  }
  for (const [name, comp] of Object.entries(manifest.components)) {
    if (comp.format !== "onnx") {
      throw new EngineError("target", `component '${name}' is in ${comp.format} format, not onnx`,
        "export an ONNX bundle: pocketvlm export --target onnx");
    }
  }
}

export interface MemoryEstimate {
  componentBytes: number;
  kvCacheBytes: number; // at the manifest's max context
  wasmBytes: number; // what the wasm heap must hold: weights + KV cache
  pageBytes: number; // the page at load: the downloaded bytes and the heap copy
}

export function estimateMemory(manifest: Manifest): MemoryEstimate {
  const componentBytes = Object.values(manifest.components).reduce((sum, c) => sum + Number(c.bytes), 0);
  const d = manifest.decoder;
  const context = manifest.generation?.max_context ?? 0;
  const kvCacheBytes = d ? 2 * d.num_layers * d.kv_heads * d.head_dim * 4 * context : 0;
  return { componentBytes, kvCacheBytes, wasmBytes: componentBytes + kvCacheBytes,
    pageBytes: 2 * componentBytes + kvCacheBytes };
}

const GiB = (n: number) => `${(n / 1024 ** 3).toFixed(2)} GiB`;

/** Refuses a bundle that cannot fit: over the wasm 4 GiB heap, or over half the device memory the browser reports
 * (`navigator.deviceMemory`, GiB, capped at 8 by browsers). */
export function checkFits(manifest: Manifest, deviceMemoryGiB?: number): MemoryEstimate {
  const est = estimateMemory(manifest);
  if (est.componentBytes > WASM_LIMIT) {
    throw new EngineError("too_large",
      `the bundle's model files are ${GiB(est.componentBytes)}, over the 4 GiB a wasm page can address`,
      "export a smaller quantization (--quant int4) or a smaller model");
  }
  if (deviceMemoryGiB && est.pageBytes > (deviceMemoryGiB * 1024 ** 3) / 2) {
    throw new EngineError("too_large",
      `the bundle needs about ${GiB(est.pageBytes)} (model files ${GiB(est.componentBytes)}, loaded twice while ` +
        `sessions start, + KV cache at max context ${GiB(est.kvCacheBytes)}); this device reports ` +
        `${deviceMemoryGiB} GiB and a tab gets about half`,
      "use a smaller quantization (--quant int4), or pass force to try anyway");
  }
  return est;
}

export interface LoadedBundle {
  manifest: Manifest;
  manifestBytes: Uint8Array;
  manifestSha256: string;
  files: Map<string, Uint8Array>;
  label: string;
  downloadMs: number;
  verifyMs: number;
}

export type LoadProgress = (event: { phase: "download" | "verify"; file: string; loaded: number; total: number })
  => void;

export async function readManifest(source: BundleSource): Promise<{ manifest: Manifest; bytes: Uint8Array }> {
  const bytes = await source.read(MANIFEST_NAME);
  return { manifest: parseManifest(bytes, `${source.label} ${MANIFEST_NAME}`), bytes };
}

/** Downloads (or reads) every listed file and checks its size and sha256; progress counts bytes over all files. */
export async function loadFiles(source: BundleSource, manifest: Manifest, manifestBytes: Uint8Array,
  onProgress?: LoadProgress): Promise<LoadedBundle> {
  const listed = new Set(manifest.files.map((f) => f.path));
  for (const [name, comp] of Object.entries(manifest.components)) {
    if (!listed.has(comp.file)) {
      throw new EngineError("bundle", `component '${name}' file ${comp.file} is not in the manifest's file list`,
        FIX_EXPORT);
    }
  }
  const total = manifest.files.reduce((sum, f) => sum + Number(f.bytes), 0);
  const files = new Map<string, Uint8Array>();
  let done = 0, downloadMs = 0, verifyMs = 0;
  for (const entry of manifest.files) {
    (source as { expectSize?: (p: string, n: number) => void }).expectSize?.(entry.path, Number(entry.bytes));
    let started = performance.now();
    const bytes = await source.read(entry.path, (loaded) =>
      onProgress?.({ phase: "download", file: entry.path, loaded: done + loaded, total }));
    downloadMs += performance.now() - started;
    started = performance.now();
    onProgress?.({ phase: "verify", file: entry.path, loaded: done + bytes.length, total });
    if (bytes.length !== Number(entry.bytes) || (await sha256Hex(bytes)) !== entry.sha256) {
      throw new EngineError("integrity",
        `bundle file ${entry.path} does not match its sha256 in ${MANIFEST_NAME} (modified or truncated)`,
        "re-export the bundle or copy it again; never edit bundle files by hand");
    }
    verifyMs += performance.now() - started;
    done += Number(entry.bytes);
    files.set(entry.path, bytes);
  }
  return { manifest, manifestBytes, manifestSha256: await sha256Hex(manifestBytes), files, label: source.label,
    downloadMs, verifyMs };
}

export function fileText(bundle: LoadedBundle, path: string): string {
  return new TextDecoder().decode(fileBytes(bundle, path));
}

export function fileBytes(bundle: LoadedBundle, path: string): Uint8Array {
  const bytes = bundle.files.get(path);
  if (!bytes) throw new EngineError("bundle", `bundle has no file ${path} in its manifest`, FIX_EXPORT);
  return bytes;
}
