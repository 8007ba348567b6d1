/**
 * The golden self-test: the bundle's golden record (golden.json + golden.png, written by the Python exporter from
 * the Python runtime) replayed stage by stage on this engine, each stage PASS/FAIL with its measured error and
 * limit. Float tensors are compared at the recorded sample indices (and their mean); int tensors and id lists
 * exactly; the text decoder teacher-forced on the recorded tokens; generation free-running greedy.
 */

import type { DualEncoder } from "./dual_encoder.js";
import { EngineError } from "./errors.js";
import { argmax } from "./generation.js";
import type { RGBAPixels } from "./image.js";
import { fileBytes, fileText, type LoadedBundle } from "./manifest.js";
import { numbers, type Tensor } from "./tensor.js";
import type { VisionLanguageModel } from "./vlm.js";

export const GOLDEN_VERSION = 1;

export interface TensorSummary {
  shape: number[];
  dtype: "float32" | "int64";
  mean?: number;
  std?: number;
  samples?: { index: number[]; value: number[] };
  values?: number[];
}

export interface GoldenStage {
  name: string;
  tensors?: Record<string, TensorSummary>;
  tolerance?: Record<string, number>;
  [key: string]: unknown;
}

export interface GoldenRecord {
  golden_version: number;
  task: string;
  family: string;
  quantization: string;
  recorded_with: string;
  image: { file: string; width: number; height: number };
  stages: GoldenStage[];
}

export interface StageResult { name: string; pass: boolean; error: number | null; limit: number | null; detail: string }

export interface SelfTestReport {
  pass: boolean;
  failed_stage: string | null;
  stages: StageResult[];
  golden: { task: string; family: string; quantization: string; recorded_with: string };
}

export type ImageDecoder = (bytes: Uint8Array, name: string) => Promise<RGBAPixels>;

export function readGolden(bundle: LoadedBundle): GoldenRecord {
  const entry = bundle.manifest.golden;
  if (!entry?.file) {
    throw new EngineError("golden", "this bundle carries no golden record (manifest has no 'golden' entry)",
      "re-export the bundle with a pocketvlm version that writes golden.json");
  }
  const record = JSON.parse(fileText(bundle, entry.file)) as GoldenRecord;
  if (record.golden_version > GOLDEN_VERSION) {
    throw new EngineError("version", `golden record version ${record.golden_version} is newer than this engine ` +
      `understands (${GOLDEN_VERSION})`, "update the web demo");
  }
  return record;
}

const fmt = (v: number) => (Math.abs(v) >= 1e-3 || v === 0 ? v.toPrecision(4) : v.toExponential(2));

/** A float tensor against its summary: shape, then max |ours - recorded| over samples and the mean. */
export function checkTensor(name: string, ours: Tensor | undefined, want: TensorSummary,
  tolerance: Record<string, number> = {}): StageResult {
  const fail = (detail: string): StageResult => ({ name, pass: false, error: null, limit: null, detail });
  if (!ours) return fail(`${name}: the engine produced no such tensor`);
  if (ours.dims.join(",") !== want.shape.join(",")) return fail(`${name}: shape [${ours.dims}] != recorded [${want.shape}]`);
  const values = numbers(ours);
  if (want.dtype === "int64" || want.values) return checkExact(name, values, want);
  const s = want.samples ?? { index: [], value: [] };
  let err = 0, worst = -1;
  s.index.forEach((index, k) => {
    const d = Math.abs(values[index] - s.value[k]);
    if (Number.isNaN(d) || d > err) { err = Number.isNaN(d) ? Infinity : d; worst = index; }
  });
  if (want.mean !== undefined) {
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    err = Math.max(err, Math.abs(mean - want.mean));
  }
  const scale = Math.max(...s.value.map(Math.abs), 0);
  const limit = tolerance.max_abs ?? (tolerance.max_abs_relative ?? 0) * scale;
  const kind = tolerance.max_abs !== undefined ? "max_abs" : `max_abs_relative ${tolerance.max_abs_relative} x ${fmt(scale)}`;
  return { name, pass: err <= limit, error: err, limit,
    detail: `${name}: max |error| ${fmt(err)} over ${s.index.length} samples + mean (worst at flat index ${worst}), ` +
      `limit ${fmt(limit)} (${kind})` };
}

function checkExact(name: string, values: number[], want: TensorSummary): StageResult {
  const pairs: [number, number][] = want.values
    ? want.values.map((v, i) => [i, v]) : (want.samples?.index ?? []).map((i, k) => [i, want.samples!.value[k]]);
  const wrong = pairs.filter(([i, v]) => values[i] !== v);
  const first = wrong[0];
  return { name, pass: wrong.length === 0, error: wrong.length, limit: 0,
    detail: wrong.length ? `${name}: ${wrong.length} of ${pairs.length} values differ (first at ${first[0]}: ` +
      `${values[first[0]]} != ${first[1]})` : `${name}: ${pairs.length} values equal` };
}

/** Several tensor checks as one stage result: fails if any fails; error = the worst ratio error / limit. */
function combine(stage: string, checks: StageResult[]): StageResult {
  const pass = checks.every((c) => c.pass);
  const worst = checks.reduce((a, c) => (!c.pass || (c.error ?? 0) / (c.limit || 1) > (a.error ?? 0) / (a.limit || 1) ? c : a));
  return { name: stage, pass, error: worst.error, limit: worst.limit, detail: checks.map((c) => c.detail).join("; ") };
}

function firstDifference(a: readonly unknown[], b: readonly unknown[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return -1;
}

function exactStage(name: string, checks: [string, readonly unknown[], readonly unknown[]][]): StageResult {
  const wrong = checks.map(([what, ours, want]) => [what, firstDifference(ours, want), ours, want] as const)
    .filter(([, at]) => at >= 0);
  const detail = wrong.length
    ? wrong.map(([what, at, ours, want]) => `${what} differs at ${at} (${JSON.stringify(ours[at])} != ` +
      `${JSON.stringify(want[at])})`).join("; ")
    : checks.map(([what, ours]) => `${what}: ${ours.length} equal`).join("; ");
  return { name, pass: wrong.length === 0, error: wrong.length, limit: 0, detail };
}

interface Step { token_id: number; top_k: [number, number][] }

/** Teacher-forced replay: logits at the recorded top-k ids, and the argmax unless the recorded step is a near tie. */
export function checkDecoderSteps(steps: Step[], logits: Float32Array[], tolerance: Record<string, number>):
  { result: StageResult; nearTies: number[] } {
  const tol = tolerance.logit_max_abs_relative ?? 0.02, tieTol = tolerance.near_tie_margin_relative ?? 0.02;
  let err = 0, worstStep = -1;
  const nearTies: number[] = [], wrongArgmax: number[] = [];
  steps.forEach((step, i) => {
    const ours = logits[i];
    if (!ours) return;
    const scale = Math.max(...step.top_k.map(([, v]) => Math.abs(v)), 1e-12);
    const e = Math.max(...step.top_k.map(([id, v]) => Math.abs(ours[id] - v))) / scale;
    if (e > err) { err = e; worstStep = i; }
    const sorted = step.top_k.map(([, v]) => v).sort((a, b) => b - a);
    const nearTie = sorted.length > 1 && sorted[0] - sorted[1] <= tieTol * scale;
    if (nearTie) nearTies.push(i);
    if (argmax(ours) !== step.token_id && !nearTie) wrongArgmax.push(i);
  });
  const missing = steps.length - logits.length;
  const pass = err <= tol && wrongArgmax.length === 0 && missing <= 0;
  const detail = `${steps.length} teacher-forced steps: max |logit error| / max |logit| ${fmt(err)} (step ` +
    `${worstStep}), limit ${tol}; argmax differs at non-near-tie steps [${wrongArgmax}]; near ties at [${nearTies}]` +
    (missing > 0 ? `; ${missing} steps not run` : "");
  return { result: { name: "text_decoder", pass, error: err, limit: tol, detail }, nearTies };
}

export function checkGeneration(stage: GoldenStage, ids: number[], text: string, reason: string, nearTies: number[]):
  StageResult {
  const want = stage.token_ids as number[];
  const at = firstDifference(ids, want);
  const onTie = at >= 0 && nearTies.includes(at);
  const pass = at < 0 || onTie;
  const detail = at < 0
    ? `${ids.length} greedy tokens equal; text ${text === stage.text ? "equal" : `differs: ${JSON.stringify(text)}`}; ` +
      `stop ${reason} (recorded ${String(stage.stop_reason)})`
    : `greedy tokens first differ at step ${at} (${ids[at]} != ${want[at]})` +
      (onTie ? ", a recorded near tie" : ", not a recorded near tie");
  return { name: "generation", pass, error: at < 0 ? 0 : ids.length - at, limit: 0, detail };
}

function report(record: GoldenRecord, stages: StageResult[]): SelfTestReport {
  const failed = stages.find((s) => !s.pass);
  return { pass: !failed && stages.length > 0, failed_stage: failed?.name ?? null, stages,
    golden: { task: record.task, family: record.family, quantization: record.quantization,
      recorded_with: record.recorded_with } };
}

async function goldenImage(bundle: LoadedBundle, record: GoldenRecord, decode: ImageDecoder): Promise<RGBAPixels> {
  const image = await decode(fileBytes(bundle, record.image.file), record.image.file);
  if (image.width !== record.image.width || image.height !== record.image.height) {
    throw new EngineError("golden", `golden image decodes to ${image.width}x${image.height}, recorded ` +
      `${record.image.width}x${record.image.height}`, "re-export the bundle");
  }
  return image;
}

const stageOf = (record: GoldenRecord, name: string) => record.stages.find((s) => s.name === name);

function tensorStage(stage: GoldenStage, ours: Record<string, Tensor>): StageResult {
  const checks = Object.entries(stage.tensors ?? {}).map(([name, want]) =>
    checkTensor(name, ours[name], want, stage.tolerance));
  return combine(stage.name, checks);
}

/** The VLM stages: preprocess, vision_encoder, prompt, text_decoder (teacher-forced), generation. */
export async function selfTestVLM(model: VisionLanguageModel, decode: ImageDecoder): Promise<SelfTestReport> {
  const record = readGolden(model.bundle);
  const image = await goldenImage(model.bundle, record, decode);
  const prompt = stageOf(record, "prompt");
  const prepared = model.prepare(image, String(prompt?.prompt ?? "Describe this image."));
  const results: StageResult[] = [];
  let nearTies: number[] = [];
  for (const stage of record.stages) {
    if (stage.name === "preprocess") results.push(tensorStage(stage, prepared.processed!.feeds));
    else if (stage.name === "vision_encoder") results.push(tensorStage(stage, await model.encodeImage(prepared.processed)));
    else if (stage.name === "prompt") results.push(promptStage(model, stage, prepared));
    else if (stage.name === "text_decoder") {
      const steps = stage.steps as Step[];
      const ids = (prompt?.input_ids as number[]) ?? prepared.inputIds;
      const run = await model.generateIds({ ...prepared, inputIds: ids }, { maxNewTokens: steps.length },
        { forced: steps.map((s) => s.token_id) });
      const checked = checkDecoderSteps(steps, run.logits ?? [], stage.tolerance ?? {});
      nearTies = checked.nearTies;
      results.push(checked.result);
    } else if (stage.name === "generation") {
      const ids = (prompt?.input_ids as number[]) ?? prepared.inputIds;
      const run = await model.generateIds({ ...prepared, inputIds: ids }, { maxNewTokens: stage.max_new_tokens as number });
      results.push(checkGeneration(stage, run.tokenIds, run.text, run.stopReason, nearTies));
    } else results.push({ name: stage.name, pass: false, error: null, limit: null, detail: "unknown stage" });
  }
  return report(record, results);
}

function promptStage(model: VisionLanguageModel, stage: GoldenStage, prepared: { inputIds: number[]; text: string;
  processed: unknown }): StageResult {
  const { positions, delta } = model.adapter.positions(prepared.inputIds, prepared.processed as never);
  const want = stage.position_ids as TensorSummary;
  const result = exactStage("prompt", [
    ["text", [...prepared.text], [...String(stage.text)]],
    ["input_ids", prepared.inputIds, stage.input_ids as number[]],
    ["position_ids", numbers(positions), want.values ?? []],
    ["rope_delta", [delta], [stage.rope_delta as number]],
  ]);
  if (positions.dims.join(",") !== want.shape.join(",")) {
    return { ...result, pass: false, detail: `position_ids shape [${positions.dims}] != [${want.shape}]; ${result.detail}` };
  }
  return result;
}

/** The dual-encoder stages: preprocess, image_encoder, text, text_encoder, scores. */
export async function selfTestDual(model: DualEncoder, decode: ImageDecoder): Promise<SelfTestReport> {
  const record = readGolden(model.bundle);
  const image = await goldenImage(model.bundle, record, decode);
  const pixels = model.pixelValues([image]);
  const text = stageOf(record, "text");
  const labels = (text?.labels as string[]) ?? [];
  const results: StageResult[] = [];
  for (const stage of record.stages) {
    if (stage.name === "preprocess") results.push(tensorStage(stage, { pixel_values: pixels }));
    else if (stage.name === "image_encoder") {
      results.push(tensorStage(stage, { image_embeds: await model.imageFeatures(pixels) }));
    } else if (stage.name === "text") {
      const prompts = model.prompts(labels);
      const enc = model.tokenizer.encode(stage.prompts as string[]);
      results.push(exactStage("text", [
        ["prompts", prompts, stage.prompts as string[]],
        ["input_ids", numbers(enc.input_ids), (stage.input_ids as number[][]).flat()],
        ["attention_mask", numbers(enc.attention_mask), (stage.attention_mask as number[][]).flat()],
      ]));
    } else if (stage.name === "text_encoder") {
      results.push(tensorStage(stage, { text_embeds: await model.textFeatures(model.prompts(labels)) }));
    } else if (stage.name === "scores") {
      results.push(scoresStage(stage, (await model.classify([image], labels)).probabilities));
    } else results.push({ name: stage.name, pass: false, error: null, limit: null, detail: "unknown stage" });
  }
  return report(record, results);
}

function scoresStage(stage: GoldenStage, ours: number[][]): StageResult {
  const want = stage.probabilities as number[][];
  const limit = stage.tolerance?.max_abs ?? 0.01;
  let err = 0;
  want.forEach((row, i) => row.forEach((p, j) => { err = Math.max(err, Math.abs((ours[i]?.[j] ?? NaN) - p)); }));
  if (Number.isNaN(err) || ours.length !== want.length) err = Infinity;
  return { name: "scores", pass: err <= limit, error: err, limit,
    detail: `probabilities: max |error| ${fmt(err)} over ${want.flat().length}, limit ${limit}` };
}
