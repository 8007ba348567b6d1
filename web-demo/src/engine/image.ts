/**
 * Image preprocessing equal to runtime/image.py (transformers' PIL path): RGBA composited onto white (Pillow's
 * integer alpha_composite), PIL resize (resample.ts), integer center crop with zero padding, rescale in float64
 * then cast to float32, normalise in float32. Constants come from the manifest's `preprocessing.image`.
 */

import { EngineError } from "./errors.js";
import { crop, resize, type ResampleName, type RGBImage } from "./resample.js";

export const DEFAULT_MAX_PIXELS = 64_000_000;

/** Decoded pixels as the browser (ImageData) or a PNG decoder gives them: 4 bytes per pixel, straight alpha. */
export interface RGBAPixels {
  width: number;
  height: number;
  data: Uint8ClampedArray | Uint8Array;
}

export function checkPixels(width: number, height: number, maxPixels: number, name = "image"): void {
  if (!(width >= 1 && height >= 1)) {
    throw new EngineError("image", `${name} is empty (${width}x${height})`, "pass an image with at least one pixel");
  }
  if (width * height > maxPixels) {
    throw new EngineError(
      "image_too_large",
      `${name} is ${width}x${height} = ${(width * height).toLocaleString("en-US")} pixels, over the limit of ` +
        `${maxPixels.toLocaleString("en-US")}`,
      "downscale the image before loading it",
    );
  }
}

/** RGB conversion as transformers does it: alpha composited onto opaque white (Pillow's AlphaComposite.c). */
export function toRGB(image: RGBAPixels): RGBImage {
  const { width, height, data } = image;
  if (data.length !== width * height * 4) {
    throw new EngineError("image", `pixel buffer of ${data.length} bytes for ${width}x${height} RGBA`,
      "pass 4 bytes per pixel (ImageData)");
  }
  const out = new Uint8Array(width * height * 3);
  for (let i = 0, o = 0; i < data.length; i += 4, o += 3) {
    const a = data[i + 3];
    if (a === 255) {
      out[o] = data[i];
      out[o + 1] = data[i + 1];
      out[o + 2] = data[i + 2];
    } else if (a === 0) {
      out[o] = out[o + 1] = out[o + 2] = 255;
    } else {
      const outa255 = a * 255 + 255 * (255 - a);
      const coef1 = Math.floor((a * 255 * 255 * 128) / outa255);
      const coef2 = 255 * 128 - coef1;
      for (let c = 0; c < 3; c++) {
        const tmp = data[i + c] * coef1 + 255 * coef2 + (0x80 << 7);
        out[o + c] = (((tmp >>> 8) + tmp) >>> 8) >>> 7;
      }
    }
  }
  return { width, height, data: out };
}

/** HWC uint8 -> CHW float32 written at `offset` of `out`: rescale in float64, cast, normalise in float32. */
export function rescaleNormalizeInto(image: RGBImage, factor: number, mean: number[], std: number[],
  out: Float32Array, offset = 0): void {
  const plane = image.width * image.height;
  const m = mean.map(Math.fround);
  const s = std.map(Math.fround);
  for (let c = 0; c < 3; c++) {
    const base = offset + c * plane;
    for (let p = 0; p < plane; p++) {
      const scaled = Math.fround(image.data[p * 3 + c] * factor);
      out[base + p] = Math.fround(Math.fround(scaled - m[c]) / s[c]);
    }
  }
}

/** Center crop; pads with zeros (centred) when the image is smaller, as transformers does. */
export function centerCrop(image: RGBImage, cropH: number, cropW: number): RGBImage {
  const { width, height } = image;
  let top = Math.floor((height - cropH) / 2);
  let left = Math.floor((width - cropW) / 2);
  if (top >= 0 && left >= 0) return crop(image, left, top, cropW, cropH);
  const newH = Math.max(cropH, height);
  const newW = Math.max(cropW, width);
  const canvas = new Uint8Array(newH * newW * 3);
  const padTop = Math.ceil((newH - height) / 2);
  const padLeft = Math.ceil((newW - width) / 2);
  for (let y = 0; y < height; y++) {
    canvas.set(image.data.subarray(y * width * 3, (y + 1) * width * 3), ((padTop + y) * newW + padLeft) * 3);
  }
  top = Math.max(top + padTop, 0);
  left = Math.max(left + padLeft, 0);
  return crop({ width: newW, height: newH, data: canvas }, left, top, cropW, cropH);
}

/** The manifest's `preprocessing.image` block of a dual-encoder (CLIP/SigLIP) bundle. */
export interface ImagePreprocessConfig {
  resize: { shortest_edge?: number; height?: number; width?: number };
  resample: ResampleName;
  center_crop?: { height: number; width: number } | null;
  rescale_factor: number;
  mean: number[];
  std: number[];
}

export function resizedSize(config: ImagePreprocessConfig, height: number, width: number): [number, number] {
  const edge = config.resize.shortest_edge;
  if (edge !== undefined) {
    const [short, long] = width <= height ? [width, height] : [height, width];
    const newLong = Math.trunc((edge * long) / short);
    return width <= height ? [newLong, edge] : [edge, newLong];
  }
  return [config.resize.height as number, config.resize.width as number];
}

export function outputSize(config: ImagePreprocessConfig): [number, number] {
  if (config.center_crop) return [config.center_crop.height, config.center_crop.width];
  return [config.resize.height as number, config.resize.width as number];
}

/** One image -> float32 [3, H, W] written into `out` at `offset` (a batch is consecutive images). */
export function preprocessInto(config: ImagePreprocessConfig, image: RGBAPixels, out: Float32Array, offset: number) {
  const rgb = toRGB(image);
  const [height, width] = resizedSize(config, rgb.height, rgb.width);
  let resized = resize(rgb, width, height, config.resample);
  if (config.center_crop) resized = centerCrop(resized, config.center_crop.height, config.center_crop.width);
  rescaleNormalizeInto(resized, config.rescale_factor, config.mean, config.std, out, offset);
}
