/** Resize and RGB conversion against PIL itself, on random images and sizes: every pixel must be equal. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { toRGB } from "../src/engine/image.js";
import { resize, type ResampleName } from "../src/engine/resample.js";
import { b64, python, randomRGBA, rng, unb64 } from "./python.js";

const FILTERS: ResampleName[] = ["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"];

const PIL_RESIZE = `
from PIL import Image
import base64
result = []
for case in data:
    raw = base64.b64decode(case["rgba"])
    rgba = Image.frombytes("RGBA", (case["w"], case["h"]), raw)
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(background, rgba).convert("RGB")
    out = rgb.resize((case["ow"], case["oh"]), resample=getattr(Image.Resampling, case["filter"].upper()))
    result.append({"rgb": base64.b64encode(rgb.tobytes()).decode(), "out": base64.b64encode(out.tobytes()).decode()})
`;

interface Case { w: number; h: number; ow: number; oh: number; filter: ResampleName; rgba: string }

function cases(): Case[] {
  const next = rng(7);
  const size = (max: number) => 1 + Math.floor(next() * max);
  const list: Case[] = [];
  FILTERS.forEach((filter, f) => {
    for (let i = 0; i < 20; i++) {
      const w = size(i < 15 ? 90 : 400), h = size(i < 15 ? 90 : 300);
      // mix of downscale, upscale, one axis unchanged, and extreme ratios
      const ow = i % 5 === 0 ? w : i % 5 === 1 ? size(300) : size(64);
      const oh = i % 5 === 2 ? h : i % 5 === 3 ? 1 + Math.floor(next() * 3) : size(128);
      list.push({ w, h, ow, oh, filter, rgba: b64(randomRGBA(w, h, 100 * f + i)) });
    }
  });
  return list;
}

test("resize equals PIL for every filter (max deviation 0 levels)", () => {
  const list = cases();
  const expected = python<{ rgb: string; out: string }[]>(PIL_RESIZE, list);
  let worst = 0, compared = 0;
  list.forEach((c, i) => {
    const rgb = toRGB({ width: c.w, height: c.h, data: unb64(c.rgba) });
    assert.deepEqual(rgb.data, unb64(expected[i].rgb), `alpha composite ${c.w}x${c.h}`);
    const out = resize(rgb, c.ow, c.oh, c.filter);
    const want = unb64(expected[i].out);
    assert.equal(out.data.length, want.length);
    let here = 0;
    for (let p = 0; p < want.length; p++) here = Math.max(here, Math.abs(out.data[p] - want[p]));
    if (here > 0) console.log(`  ${c.filter} ${c.w}x${c.h} -> ${c.ow}x${c.oh}: ${here} levels`);
    worst = Math.max(worst, here);
    compared += want.length;
  });
  console.log(`resize vs PIL: ${list.length} cases, ${compared} values, max deviation ${worst} levels`);
  assert.equal(worst, 0);
});

test("a pass whose size is unchanged is skipped (output equals input rows)", () => {
  const rgb = toRGB({ width: 5, height: 4, data: randomRGBA(5, 4, 3, true) });
  const out = resize(rgb, 5, 9, "bicubic");
  assert.equal(out.width, 5);
  assert.equal(out.height, 9);
  assert.deepEqual(resize(rgb, 5, 4, "lanczos").data, rgb.data);
});
