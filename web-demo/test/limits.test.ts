/** Refusals made before any work is done: a bundle too large for the device (estimated from the manifest alone), an
 * image whose header claims more pixels than the limit (checked before decoding). */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { EngineError } from "../src/engine/errors.js";
import { checkPixels } from "../src/engine/image.js";
import { checkFits, estimateMemory } from "../src/engine/manifest.js";
import { headerSize } from "../src/ui/decode.js";
import { tinyBundle } from "./fixtures.js";

const manifest = () => JSON.parse(readFileSync(path.join(tinyBundle("idefics3"), "manifest.json"), "utf-8"));

test("a bundle over half the device's reported memory is refused with the numbers", () => {
  const m = manifest();
  const estimate = estimateMemory(m);
  assert.ok(estimate.componentBytes > 0 && estimate.kvCacheBytes > 0);
  const tooSmall = (estimate.pageBytes * 1.5) / 1024 ** 3; // GiB: half of it is below what the bundle needs
  assert.throws(() => checkFits(m, tooSmall), (e: unknown) => e instanceof EngineError && e.kind === "too_large" &&
    /needs about .* GiB .* this device reports/.test(e.problem) && /smaller quantization/.test(e.fix));
  assert.doesNotThrow(() => checkFits(m, (estimate.pageBytes * 2.5) / 1024 ** 3));
  for (const component of Object.values(m.components) as { bytes: number }[]) component.bytes = 5 * 1024 ** 3;
  assert.throws(() => checkFits(m), (e: unknown) => e instanceof EngineError && /4 GiB a wasm page/.test(e.problem));
});

test("an image header that claims 100,000 x 100,000 pixels is refused before decoding", () => {
  const png = new Uint8Array(33);
  png.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52]);
  new DataView(png.buffer).setUint32(16, 100_000);
  new DataView(png.buffer).setUint32(20, 100_000);
  assert.deepEqual(headerSize(png), [100_000, 100_000]);
  assert.throws(() => checkPixels(100_000, 100_000, 64_000_000, "bomb.png"),
    (e: unknown) => e instanceof EngineError && e.kind === "image_too_large" && /bomb\.png is 100000x100000/.test(e.problem));
  assert.throws(() => checkPixels(0, 10, 64_000_000), (e: unknown) => e instanceof EngineError && /empty/.test(e.problem));
});
