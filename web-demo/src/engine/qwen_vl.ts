/** Qwen2-VL (and Qwen2.5-VL / Qwen3-VL) image preprocessing, vision-encoder feeds and M-RoPE positions, as
 * runtime/qwen_vl.py (transformers' Qwen2VLImageProcessor, PIL backend, and get_rope_index). */

import type { Processed, VisionAdapter } from "./adapter.js";
import { EngineError } from "./errors.js";
import { rescaleNormalizeInto, toRGB, type RGBAPixels } from "./image.js";
import { resize, type ResampleName } from "./resample.js";
import { f32, i64, i64From, type Tensor } from "./tensor.js";

export interface QwenConfig {
  resample: ResampleName;
  rescale_factor: number;
  mean: number[];
  std: number[];
  patch_size: number;
  merge_size: number;
  temporal_patch_size: number;
  min_pixels: number;
  max_pixels: number;
  fixed_size?: [number, number] | null;
  window?: { window_size: number } | null;
  position_table?: { grid_per_side: number } | null;
}

export interface QwenImage extends Processed {
  grid: [number, number]; // patch rows, patch cols
  merge: number;
  positionIds: Int32Array; // [patches, 2] (row, col), merge-block order
}

/** Python 3's round(): half to even. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export function smartResize(height: number, width: number, factor: number, minPixels: number, maxPixels: number) {
  const ratio = Math.max(height, width) / Math.min(height, width);
  if (ratio > 200) {
    throw new EngineError("image", `image aspect ratio ${ratio.toFixed(0)}:1 is over 200:1`,
      "crop the image to a less extreme shape");
  }
  let h = roundHalfEven(height / factor) * factor;
  let w = roundHalfEven(width / factor) * factor;
  if (h * w > maxPixels) {
    const beta = Math.sqrt((height * width) / maxPixels);
    h = Math.max(factor, Math.floor(height / beta / factor) * factor);
    w = Math.max(factor, Math.floor(width / beta / factor) * factor);
  } else if (h * w < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    h = Math.ceil((height * beta) / factor) * factor;
    w = Math.ceil((width * beta) / factor) * factor;
  }
  return [h, w];
}

/** (row, col) of every patch, merge-block by merge-block, as the patches are ordered. */
export function visionPositionIds(rows: number, cols: number, merge: number): Int32Array {
  const out = new Int32Array(rows * cols * 2);
  let n = 0;
  for (let br = 0; br < rows / merge; br++) for (let bc = 0; bc < cols / merge; bc++) {
    for (let ir = 0; ir < merge; ir++) for (let ic = 0; ic < merge; ic++) {
      out[n++] = br * merge + ir;
      out[n++] = bc * merge + ic;
    }
  }
  return out;
}

export function preprocess(image: RGBAPixels, c: QwenConfig): QwenImage {
  const { patch_size: patch, merge_size: merge, temporal_patch_size: temporal } = c;
  const rgb = toRGB(image);
  const [height, width] = c.fixed_size ?? smartResize(rgb.height, rgb.width, patch * merge, c.min_pixels, c.max_pixels);
  const chw = new Float32Array(3 * height * width);
  rescaleNormalizeInto(resize(rgb, width, height, c.resample), c.rescale_factor, c.mean, c.std, chw);
  const rows = height / patch, cols = width / patch;
  const positionIds = visionPositionIds(rows, cols, merge);
  const dim = 3 * temporal * patch * patch;
  const flat = new Float32Array(rows * cols * dim);
  for (let n = 0; n < rows * cols; n++) {
    const row = positionIds[n * 2], col = positionIds[n * 2 + 1];
    let o = n * dim;
    for (let ch = 0; ch < 3; ch++) for (let t = 0; t < temporal; t++) for (let py = 0; py < patch; py++) {
      const from = (ch * height + row * patch + py) * width + col * patch;
      flat.set(chw.subarray(from, from + patch), o);
      o += patch;
    }
  }
  const feeds: Record<string, Tensor> = {
    pixel_values: f32(flat, [rows * cols, dim]),
    vision_position_ids: i64From(positionIds, [rows * cols, 2]),
  };
  if (c.window) Object.assign(feeds, windowLayout(rows, cols, merge, c.window.window_size, patch));
  if (c.position_table) Object.assign(feeds, positionTableTaps(positionIds, rows, cols, c.position_table.grid_per_side));
  return { feeds, grid: [rows, cols], merge, positionIds };
}

/** Qwen2.5-VL windows: merged tokens window by window, and each patch's window id in that order. */
export function windowLayout(rows: number, cols: number, merge: number, windowSize: number, patch: number) {
  const side = Math.floor(Math.floor(windowSize / merge) / patch);
  const gh = rows / merge, gw = cols / merge;
  const order: number[] = [], ids: number[] = [];
  let win = 0;
  for (let top = 0; top < gh; top += side) for (let left = 0; left < gw; left += side) {
    let count = 0;
    for (let r = top; r < Math.min(top + side, gh); r++) for (let c = left; c < Math.min(left + side, gw); c++) {
      order.push(r * gw + c);
      count++;
    }
    for (let i = 0; i < count * merge * merge; i++) ids.push(win);
    win++;
  }
  return { window_index: i64From(order, [order.length]), window_ids: i64From(ids, [ids.length]) };
}

/** Qwen3-VL: bilinear (align_corners) taps and weights into the side x side learned position table, in numpy's
 * float32 / float64 steps. */
export function positionTableTaps(positions: Int32Array, rows: number, cols: number, side: number) {
  const n = positions.length / 2;
  const indices = new BigInt64Array(n * 4), weights = new Float32Array(n * 4);
  const axis = (index: number, size: number) => {
    const src = Math.fround(Math.fround(index * Math.fround(side - 1)) / Math.fround(Math.max(size - 1, 1)));
    const floor = Math.floor(src);
    const frac = Math.fround(src - floor);
    return [0, 1].map((o) => ({ tap: Math.min(Math.max(floor + o, 0), side - 1),
      weight: Math.fround(Math.max(1 - Math.abs(frac - o), 0)) }));
  };
  for (let p = 0; p < n; p++) {
    const h = axis(positions[p * 2], rows), w = axis(positions[p * 2 + 1], cols);
    for (let a = 0; a < 2; a++) for (let b = 0; b < 2; b++) {
      indices[p * 4 + a * 2 + b] = BigInt(h[a].tap * side + w[b].tap);
      weights[p * 4 + a * 2 + b] = Math.fround(h[a].weight * w[b].weight);
    }
  }
  return { interp_indices: i64(indices, [n, 4]), interp_weights: f32(weights, [n, 4]) };
}

/** [3, 1, seq] M-RoPE positions for one prompt, and the delta decode steps add to their 1-D position. */
export function mropePositions(inputIds: number[], imageTokenId: number, images: QwenImage[]) {
  const seq = inputIds.length;
  const pos = new BigInt64Array(3 * seq);
  let cursor = 0, index = 0, next = 0, max = -1;
  const set = (axis: number, at: number, value: number) => {
    pos[axis * seq + at] = BigInt(value);
    if (value > max) max = value;
  };
  while (index < seq) {
    if (inputIds[index] === imageTokenId && next < images.length) {
      const image = images[next++];
      const rows = image.grid[0] / image.merge, cols = image.grid[1] / image.merge;
      for (let k = 0; k < rows * cols && index + k < seq; k++) {
        set(0, index + k, cursor);
        set(1, index + k, cursor + Math.floor(k / cols));
        set(2, index + k, cursor + (k % cols));
      }
      index += rows * cols;
      cursor += Math.max(rows, cols);
    } else {
      for (let axis = 0; axis < 3; axis++) set(axis, index, cursor);
      cursor++;
      index++;
    }
  }
  return { positions: i64(pos, [3, 1, seq]), delta: seq ? max + 1 - seq : 0 };
}

export class QwenAdapter implements VisionAdapter<QwenImage> {
  constructor(private readonly config: QwenConfig, private readonly special: Record<string, unknown>) {}

  preprocess(image: RGBAPixels): QwenImage {
    return preprocess(image, this.config);
  }

  expand(text: string, processed: QwenImage): string {
    const token = this.special.image_token as string;
    const count = (processed.grid[0] * processed.grid[1]) / processed.merge ** 2;
    return text.split(token).join(token.repeat(count));
  }

  positions(inputIds: number[], processed: QwenImage | null) {
    return mropePositions(inputIds, this.special.image_token_id as number, processed ? [processed] : []);
  }

  stepPosition(position: number): Tensor {
    return i64(BigInt64Array.of(BigInt(position), BigInt(position), BigInt(position)), [3, 1, 1]);
  }
}
