/** The engine end to end under Node (onnxruntime-web wasm): greedy ids and probabilities against the Python
 * runtime, the golden self-test (PASS on good bundles, FAIL naming the stage on tampered records), and the
 * refusals (tampered file, newer schema, a target the browser cannot run). */

import assert from "node:assert/strict";
import { cpSync, existsSync, mkdtempSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";

import { EngineError } from "../src/engine/errors.js";
import { decodePng, readImage } from "../src/node/files.js";
import { goldenBundle, openEngine, SHAPES_IMAGES, tinyBundle } from "./fixtures.js";
import { python } from "./python.js";

const IMAGES = [0, 1, 2, 5, 8].map((i) => path.join(SHAPES_IMAGES, `${i}.png`));
const decode = async (bytes: Uint8Array, name: string) => decodePng(bytes, name);

for (const family of ["idefics3", "qwen2_vl"]) {
  test(`${family}: greedy token ids equal the Python runtime's (caption and a question)`, async () => {
    const bundle = tinyBundle(family);
    const want = python<number[][]>(`
from pocketvlm.runtime.vlm import VisionLanguageModel
from pocketvlm.runtime.generation import GenerationConfig
m = VisionLanguageModel.load(data["bundle"])
result = [m.generate(p, prompt, GenerationConfig(max_new_tokens=10)).token_ids
          for p in data["images"] for prompt in ("Describe this image.", "what is the red shape?")]
`, { bundle, images: IMAGES });
    const engine = await openEngine(bundle);
    const ours: number[][] = [];
    for (const file of IMAGES) {
      const image = await readImage(file);
      for (const prompt of ["Describe this image.", "what is the red shape?"]) {
        ours.push((await engine.caption(image, { prompt, maxNewTokens: 10 })).token_ids);
      }
    }
    assert.deepEqual(ours, want);
  });
}

test("clip and siglip: zero-shot probabilities within 1e-5 of the Python runtime's", async () => {
  for (const family of ["clip", "siglip"]) {
    const bundle = tinyBundle(family);
    const labels = ["a red circle", "a blue triangle", "a photo of a cat"];
    const want = python<number[][]>(`
from pocketvlm.runtime.dual_encoder import DualEncoder
m = DualEncoder.load(data["bundle"])
text = m.embed_text(m.prompts(data["labels"]))
result = m.probabilities(m.logits(m.embed_image(data["images"]), text)).tolist()
`, { bundle, images: IMAGES, labels });
    const engine = await openEngine(bundle);
    const out = await engine.classify(await Promise.all(IMAGES.map(readImage)), labels);
    out.forEach((row, i) => row.probabilities.forEach((p, j) =>
      assert.ok(Math.abs(p - want[i][j]) < 1e-5, `${family} image ${i} label ${j}: ${p} vs ${want[i][j]}`)));
  }
});

test("the exporter's own golden record (golden.json written by pocketvlm export) passes on this engine", async () => {
  for (const family of ["idefics3", "qwen2_vl", "clip", "siglip"]) {
    const bundle = tinyBundle(family);
    if (!existsSync(path.join(bundle, "golden.json"))) assert.fail(`${family}: the exporter wrote no golden.json`);
    const report = await (await openEngine(bundle)).selftest(decode);
    assert.equal(report.pass, true, `${family}: ${JSON.stringify(report.stages.filter((s) => !s.pass))}`);
    assert.equal(report.stages.length, 5);
  }
});

test("golden self-test FAILs and names the stage of a tampered record", async () => {
  const cases: [string, string][] = [["idefics3", "vision_encoder"], ["qwen2_vl", "text_decoder"],
    ["idefics3", "preprocess"], ["qwen2_vl", "generation"], ["clip", "scores"], ["siglip", "text"]];
  for (const [family, stage] of cases) {
    const report = await (await openEngine(goldenBundle(family, stage))).selftest(decode);
    assert.equal(report.pass, false, `${family} tampered ${stage} passed`);
    assert.equal(report.failed_stage, stage);
    assert.equal(report.stages.find((s) => s.name === stage)?.pass, false);
  }
});

function copyBundle(edit: (dir: string) => void): string {
  const dir = path.join(mkdtempSync(path.join(os.tmpdir(), "pvlm-web-")), "bundle");
  // a real copy even when the fixture is a symlink (the suite links its own bundles): edits never reach the source
  cpSync(realpathSync(tinyBundle("clip")), dir, { recursive: true, dereference: true });
  edit(dir);
  return dir;
}

async function refusal(dir: string): Promise<EngineError> {
  try {
    await openEngine(dir);
  } catch (error) {
    if (error instanceof EngineError) return error;
    throw error;
  }
  assert.fail(`${dir} loaded`);
}

test("refusals name the problem and the fix: tampered file, newer schema, tflite target, missing dir", async () => {
  const tampered = await refusal(copyBundle((d) => {
    const f = path.join(d, "tokenizer.json");
    writeFileSync(f, readFileSync(f, "utf-8").replace("a", "b"));
  }));
  assert.equal(tampered.kind, "integrity");
  assert.match(tampered.oneLine(), /tokenizer\.json does not match its sha256.*fix: re-export/);
  const edit = (change: (m: Record<string, unknown>) => void) => copyBundle((d) => {
    const m = JSON.parse(readFileSync(path.join(d, "manifest.json"), "utf-8"));
    change(m);
    writeFileSync(path.join(d, "manifest.json"), JSON.stringify(m));
  });
  const newer = await refusal(edit((m) => { m.schema_version = 2; }));
  assert.equal(newer.kind, "version");
  assert.match(newer.message, /schema version 2 is newer/);
  const tflite = await refusal(edit((m) => { m.target = "tflite"; }));
  assert.equal(tflite.kind, "target");
  assert.match(tflite.message, /ONNX bundles only.*--target onnx/);
  const missing = await refusal("/nonexistent/bundle");
  assert.match(missing.message, /bundle directory not found/);
  await assert.rejects(readImage(path.join(tinyBundle("clip"), "manifest.json")), /not a PNG image/);
});

const DEMO = path.join(os.homedir(), ".cache/pocketvlm/demo/bundles/shapes-captioner-int4");
test("shapes captioner (int4 demo bundle): greedy ids equal the Python runtime's", { skip: !existsSync(DEMO) &&
  "no demo bundle (run `pocketvlm demo` first)" }, async () => {
  const want = python<number[][]>(`
from pocketvlm.runtime.vlm import VisionLanguageModel
m = VisionLanguageModel.load(data["bundle"])
result = [m.generate(p).token_ids for p in data["images"]]
`, { bundle: DEMO, images: IMAGES });
  const engine = await openEngine(DEMO);
  const ours = [];
  for (const file of IMAGES) ours.push((await engine.caption(await readImage(file))).token_ids);
  assert.deepEqual(ours, want);
});
