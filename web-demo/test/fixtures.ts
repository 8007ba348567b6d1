/** Test fixtures: tiny random-weight bundles exported by the real exporter (scripts/make_tiny_bundles.py), each with
 * the exporter's own golden record, and copies whose record has one stage edited (scripts/tamper_golden.py), cached
 * under build/fixtures. */

import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as ort from "onnxruntime-web";

import { Engine } from "../src/engine/engine.js";
import { DirSource } from "../src/node/files.js";
import { PYTHON } from "./python.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const FIXTURES = process.env.POCKETVLM_WEB_FIXTURES ?? path.join(ROOT, "build", "fixtures");
export const SHAPES_IMAGES = execFileSync(PYTHON, ["-c",
  "import easy_vqa, os; print(os.path.join(os.path.dirname(easy_vqa.__file__), 'data', 'test', 'images'))"],
{ encoding: "utf-8" }).trim();

export function tinyBundle(family: string): string {
  const dir = path.join(FIXTURES, `${family}-fp32`);
  if (!existsSync(path.join(dir, "manifest.json"))) {
    execFileSync(PYTHON, [path.join(ROOT, "scripts", "make_tiny_bundles.py"), FIXTURES, family], { stdio: "ignore" });
  }
  return dir;
}

export function goldenBundle(family: string, tamper?: string): string {
  if (!tamper) return tinyBundle(family); // the exporter's own record
  const out = path.join(FIXTURES, `golden-${family}-tampered-${tamper}`);
  if (!existsSync(path.join(out, "golden.json"))) {
    execFileSync(PYTHON, [path.join(ROOT, "scripts", "tamper_golden.py"), "--bundle", tinyBundle(family), "--out", out,
      "--stage", tamper], { stdio: "ignore" });
  }
  return out;
}

export const openEngine = (dir: string) => Engine.open(ort, new DirSource(dir), { backend: "wasm", threads: 1, force: true });
