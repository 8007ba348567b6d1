/** Idefics3 / SmolVLM image preprocessing (tiling), prompt expansion and 1-D positions, as runtime/idefics3.py. */

import type { Processed, VisionAdapter } from "./adapter.js";
import { rescaleNormalizeInto, toRGB, type RGBAPixels } from "./image.js";
import { crop, resize, type ResampleName, type RGBImage } from "./resample.js";
import { f32, i64, type Tensor } from "./tensor.js";

const MAX_IMAGE_SIZE = 4096;

export interface Idefics3Config {
  resample: ResampleName;
  rescale_factor: number;
  mean: number[];
  std: number[];
  longest_edge: number;
  tile_size: number;
  split: boolean;
  image_seq_len: number;
}

export interface TiledImage extends Processed {
  rows: number; // 0 when the image was not split
  cols: number;
}

export function fitLongestEdge(height: number, width: number, longest: number): [number, number] {
  const aspect = width / height;
  if (width >= height) {
    width = longest;
    height = Math.trunc(longest / aspect);
    height += height % 2;
  } else {
    height = longest;
    width = Math.trunc(longest * aspect);
    width += width % 2;
  }
  height = Math.max(height, 1);
  width = Math.max(width, 1);
  if (width >= height && width > MAX_IMAGE_SIZE) {
    width = MAX_IMAGE_SIZE;
    height = Math.trunc(MAX_IMAGE_SIZE / aspect);
  } else if (height > width && height > MAX_IMAGE_SIZE) {
    height = MAX_IMAGE_SIZE;
    width = Math.trunc(MAX_IMAGE_SIZE * aspect);
  }
  return [Math.max(height, 1), Math.max(width, 1)];
}

export function multipleOfTile(height: number, width: number, tile: number): [number, number] {
  const aspect = width / height;
  if (width >= height) {
    width = Math.ceil(width / tile) * tile;
    height = Math.ceil(Math.trunc(width / aspect) / tile) * tile;
  } else {
    height = Math.ceil(height / tile) * tile;
    width = Math.ceil(Math.trunc(height * aspect) / tile) * tile;
  }
  return [height, width];
}

function frames(image: RGBAPixels, c: Idefics3Config): { frames: RGBImage[]; rows: number; cols: number } {
  const tile = c.tile_size;
  const rgb = toRGB(image);
  let [height, width] = fitLongestEdge(rgb.height, rgb.width, c.longest_edge);
  let resized = resize(rgb, width, height, c.resample);
  if (!c.split) return { frames: [resize(resized, tile, tile, c.resample)], rows: 0, cols: 0 };
  [height, width] = multipleOfTile(height, width, tile);
  resized = resize(resized, width, height, c.resample);
  if (!(height > tile || width > tile)) return { frames: [resized], rows: 0, cols: 0 };
  const rows = Math.floor((height - tile) / tile) + 1;
  const cols = Math.floor((width - tile) / tile) + 1;
  const list: RGBImage[] = [];
  for (let r = 0; r < rows; r++) for (let col = 0; col < cols; col++) list.push(crop(resized, col * tile, r * tile, tile, tile));
  list.push(resize(resized, tile, tile, c.resample));
  return { frames: list, rows, cols };
}

export function preprocess(image: RGBAPixels, c: Idefics3Config): TiledImage {
  const tiled = frames(image, c);
  const { width, height } = tiled.frames[0];
  const plane = 3 * width * height;
  const data = new Float32Array(tiled.frames.length * plane);
  tiled.frames.forEach((frame, i) => rescaleNormalizeInto(frame, c.rescale_factor, c.mean, c.std, data, i * plane));
  const pixelValues = f32(data, [tiled.frames.length, 3, height, width]);
  return { feeds: { pixel_values: pixelValues }, rows: tiled.rows, cols: tiled.cols };
}

export class Idefics3Adapter implements VisionAdapter<TiledImage> {
  constructor(private readonly config: Idefics3Config, private readonly special: Record<string, unknown>) {}

  preprocess(image: RGBAPixels): TiledImage {
    return preprocess(image, this.config);
  }

  expand(text: string, processed: TiledImage): string {
    const fake = this.special.fake_image_token as string;
    const image = this.special.image_token as string;
    const glob = this.special.global_image_token as string;
    const run = image.repeat(this.config.image_seq_len);
    let replacement: string;
    if (processed.rows === 0 && processed.cols === 0) {
      replacement = `${fake}${glob}${run}${fake}`;
    } else {
      replacement = "";
      for (let r = 0; r < processed.rows; r++) {
        for (let c = 0; c < processed.cols; c++) replacement += `${fake}<row_${r + 1}_col_${c + 1}>${run}`;
        replacement += "\n";
      }
      replacement += `\n${fake}${glob}${run}${fake}`;
    }
    const at = text.indexOf(image);
    return at < 0 ? text : text.slice(0, at) + replacement + text.slice(at + image.length);
  }

  positions(inputIds: number[]): { positions: Tensor; delta: number } {
    return { positions: i64(BigInt64Array.from(inputIds.keys(), BigInt), [1, inputIds.length]), delta: 0 };
  }

  stepPosition(position: number): Tensor {
    return i64(BigInt64Array.of(BigInt(position)), [1, 1]);
  }
}
