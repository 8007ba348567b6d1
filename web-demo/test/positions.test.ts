/** Qwen2-VL smart_resize, patch order, M-RoPE positions, Qwen2.5 windows and Qwen3 taps against runtime/qwen_vl.py;
 * Idefics3 sizes against runtime/idefics3.py. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { fitLongestEdge, multipleOfTile } from "../src/engine/idefics3.js";
import { mropePositions, positionTableTaps, smartResize, visionPositionIds, windowLayout,
  type QwenImage } from "../src/engine/qwen_vl.js";
import { numbers } from "../src/engine/tensor.js";
import { python } from "./python.js";

const SIZES = [[480, 640], [28, 28], [1000, 37], [37, 1000], [300, 300], [17, 3000], [77, 91], [1, 150]];

test("smart_resize and Idefics3 sizes equal the Python's", () => {
  const want = python<{ qwen: number[][]; fit: number[][]; tile: number[][] }>(`
from pocketvlm.runtime.qwen_vl import smart_resize
from pocketvlm.runtime.idefics3 import _fit_longest_edge, _multiple_of_tile
result = {"qwen": [list(smart_resize(h, w, 28, 3136, 200000)) for h, w in data],
          "fit": [list(_fit_longest_edge(h, w, 364)) for h, w in data],
          "tile": [list(_multiple_of_tile(*_fit_longest_edge(h, w, 364), 64)) for h, w in data]}
`, SIZES);
  SIZES.forEach(([h, w], i) => {
    assert.deepEqual(smartResize(h, w, 28, 3136, 200000), want.qwen[i], `smart_resize ${h}x${w}`);
    const fit = fitLongestEdge(h, w, 364);
    assert.deepEqual(fit, want.fit[i], `fit ${h}x${w}`);
    assert.deepEqual(multipleOfTile(fit[0], fit[1], 64), want.tile[i], `tile ${h}x${w}`);
  });
});

test("vision position ids, M-RoPE positions and delta equal the Python's", () => {
  const grids = [[4, 6], [8, 2], [2, 2]];
  const imageToken = 99;
  const cases = grids.map(([r, c], i) => {
    const tokens = (r * c) / 4;
    return { grid: [r, c], ids: [1, 2, ...Array(i).fill(5), ...Array(tokens).fill(imageToken), 7, 8, 9] };
  });
  const want = python<{ pos: number[]; delta: number; vpid: number[] }[]>(`
import numpy as np
from pocketvlm.runtime.qwen_vl import QwenImage, mrope_positions, vision_position_ids
result = []
for c in data:
    rows, cols = c["grid"]
    vpid = vision_position_ids(rows, cols, 2)
    image = QwenImage(np.zeros((rows * cols, 1), np.float32), vpid, (rows, cols), 2)
    pos, delta = mrope_positions(np.asarray(c["ids"]), ${imageToken}, [image])
    result.append({"pos": pos.reshape(-1).tolist(), "delta": delta, "vpid": vpid.reshape(-1).tolist()})
`, cases);
  cases.forEach((c, i) => {
    const [rows, cols] = c.grid;
    const vpid = visionPositionIds(rows, cols, 2);
    assert.deepEqual(Array.from(vpid), want[i].vpid);
    const image = { grid: [rows, cols], merge: 2, positionIds: vpid, feeds: {} } as QwenImage;
    const { positions, delta } = mropePositions(c.ids, imageToken, [image]);
    assert.deepEqual(numbers(positions), want[i].pos, `positions case ${i}`);
    assert.equal(delta, want[i].delta);
  });
});

test("Qwen2.5-VL window layout and Qwen3-VL position-table taps equal the Python's", () => {
  const want = python<{ index: number[]; ids: number[]; taps: number[]; weights: number[] }>(`
from pocketvlm.runtime.qwen_vl import window_layout, position_table_taps, vision_position_ids
index, ids = window_layout(12, 20, 2, 112, 14)
taps, weights = position_table_taps(vision_position_ids(6, 10, 2), 6, 10, 48)
result = {"index": index.tolist(), "ids": ids.tolist(), "taps": taps.reshape(-1).tolist(),
          "weights": weights.reshape(-1).tolist()}
`, {});
  const w = windowLayout(12, 20, 2, 112, 14);
  assert.deepEqual(numbers(w.window_index), want.index);
  assert.deepEqual(numbers(w.window_ids), want.ids);
  const t = positionTableTaps(visionPositionIds(6, 10, 2), 6, 10, 48);
  assert.deepEqual(numbers(t.interp_indices), want.taps);
  assert.deepEqual(Array.from(t.interp_weights.data as Float32Array), want.weights);
});
