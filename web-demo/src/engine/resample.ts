/**
 * PIL's `Image.resize` for 8-bit RGB, ported from the algorithm of Pillow's libImaging (Resample.c for the
 * convolution filters, Geometry.c's scale-affine path for NEAREST), so resized pixels equal PIL's exactly.
 *
 * Convolution filters: per output pixel of each axis, filter weights over the input span (support widened by the
 * downscale factor), normalised to sum 1, then turned into fixed point with PRECISION_BITS fractional bits
 * (rounded half away from zero). Pass order as Pillow 13: horizontal first (over only the rows the vertical pass
 * reads), unless the height shrinks by more than twice what the width does, then vertical first; each pass rounds
 * (adds half) and clips to 0..255. A pass whose size does not change is skipped. (Pillow before 13 always ran the
 * horizontal pass first: the two orders can differ by a few levels on strong one-axis reductions.)
 * Sums stay below 2^31 as in the C code; JS numbers hold them exactly.
 */

export type ResampleName = "nearest" | "box" | "bilinear" | "hamming" | "bicubic" | "lanczos";

/** An RGB image, 3 bytes per pixel, row-major. */
export interface RGBImage {
  width: number;
  height: number;
  data: Uint8Array;
}

interface Filter {
  support: number;
  weight: (x: number) => number;
}

const PRECISION_BITS = 32 - 8 - 2;
const F054 = Math.fround(0.54);
const F046 = Math.fround(0.46);

function sinc(x: number): number {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

const FILTERS: Record<Exclude<ResampleName, "nearest">, Filter> = {
  box: { support: 0.5, weight: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0) },
  bilinear: {
    support: 1,
    weight: (x) => {
      const a = Math.abs(x);
      return a < 1 ? 1 - a : 0;
    },
  },
  hamming: {
    support: 1,
    weight: (x) => {
      const a = Math.abs(x);
      if (a === 0) return 1;
      if (a >= 1) return 0;
      const px = a * Math.PI;
      return (Math.sin(px) / px) * (F054 + F046 * Math.cos(px)); // C float constants 0.54f, 0.46f
    },
  },
  bicubic: {
    support: 2,
    weight: (x) => {
      const a = -0.5;
      const t = Math.abs(x);
      if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
      if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
      return 0;
    },
  },
  lanczos: { support: 3, weight: (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0) },
};

/** C's (int) cast: truncation toward zero. */
const trunc = (v: number): number => (v < 0 ? Math.ceil(v) : Math.floor(v));

interface Coefficients {
  ksize: number;
  bounds: Int32Array; // per output pixel: first input index, tap count
  kk: Float64Array; // ksize fixed-point weights per output pixel (integers held in doubles)
}

function precompute(inSize: number, outSize: number, filter: Filter): Coefficients {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Float64Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const ss = 1 / filterscale;
  const weights = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(trunc(center - support + 0.5), 0);
    const count = Math.min(trunc(center + support + 0.5), inSize) - xmin;
    let total = 0;
    for (let x = 0; x < count; x++) {
      weights[x] = filter.weight((x + xmin - center + 0.5) * ss);
      total += weights[x];
    }
    for (let x = 0; x < count; x++) {
      const w = total !== 0 ? weights[x] / total : weights[x];
      const fixed = w * (1 << PRECISION_BITS);
      kk[xx * ksize + x] = w < 0 ? trunc(-0.5 + fixed) : trunc(0.5 + fixed);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = count;
  }
  return { ksize, bounds, kk };
}

const HALF = 1 << (PRECISION_BITS - 1);
const LIMIT = 1 << PRECISION_BITS;

function clip8(acc: number): number {
  const v = Math.floor(acc / LIMIT); // arithmetic shift right
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Horizontal pass over rows [rowFirst, rowFirst + rows) of the input. */
function horizontal(src: RGBImage, outWidth: number, rowFirst: number, rows: number, c: Coefficients): RGBImage {
  const out = new Uint8Array(outWidth * rows * 3);
  for (let y = 0; y < rows; y++) {
    const inRow = (y + rowFirst) * src.width * 3;
    for (let xx = 0; xx < outWidth; xx++) {
      const xmin = c.bounds[xx * 2];
      const count = c.bounds[xx * 2 + 1];
      const k = xx * c.ksize;
      let s0 = HALF, s1 = HALF, s2 = HALF;
      for (let x = 0; x < count; x++) {
        const p = inRow + (x + xmin) * 3;
        const w = c.kk[k + x];
        s0 += src.data[p] * w;
        s1 += src.data[p + 1] * w;
        s2 += src.data[p + 2] * w;
      }
      const o = (y * outWidth + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return { width: outWidth, height: rows, data: out };
}

/** Vertical pass; `shift` is subtracted from the row bounds (rows the horizontal pass skipped). */
function vertical(src: RGBImage, outHeight: number, c: Coefficients, shift: number): RGBImage {
  const width = src.width;
  const out = new Uint8Array(width * outHeight * 3);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = c.bounds[yy * 2] - shift;
    const count = c.bounds[yy * 2 + 1];
    const k = yy * c.ksize;
    for (let xx = 0; xx < width; xx++) {
      let s0 = HALF, s1 = HALF, s2 = HALF;
      for (let y = 0; y < count; y++) {
        const p = ((y + ymin) * width + xx) * 3;
        const w = c.kk[k + y];
        s0 += src.data[p] * w;
        s1 += src.data[p + 1] * w;
        s2 += src.data[p + 2] * w;
      }
      const o = (yy * width + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return { width, height: outHeight, data: out };
}

/** NEAREST as Geometry.c's ImagingScaleAffine: source coordinate accumulated in doubles, truncated. */
function nearest(src: RGBImage, width: number, height: number): RGBImage {
  const sx = src.width / width;
  const sy = src.height / height;
  const columns = new Int32Array(width);
  let xo = sx * 0.5;
  for (let x = 0; x < width; x++) {
    columns[x] = Math.min(trunc(xo), src.width - 1);
    xo += sx;
  }
  const out = new Uint8Array(width * height * 3);
  let yo = sy * 0.5;
  for (let y = 0; y < height; y++) {
    const row = Math.min(trunc(yo), src.height - 1) * src.width;
    for (let x = 0; x < width; x++) {
      const p = (row + columns[x]) * 3;
      const o = (y * width + x) * 3;
      out[o] = src.data[p];
      out[o + 1] = src.data[p + 1];
      out[o + 2] = src.data[p + 2];
    }
    yo += sy;
  }
  return { width, height, data: out };
}

/** `image.resize((width, height), resample)` for an RGB image. */
export function resize(src: RGBImage, width: number, height: number, resample: ResampleName): RGBImage {
  if (width < 1 || height < 1) throw new RangeError(`resize to ${width}x${height}`);
  if (width === src.width && height === src.height) {
    return { width, height, data: src.data.slice() };
  }
  if (resample === "nearest") return nearest(src, width, height);
  const filter = FILTERS[resample];
  if (!filter) throw new RangeError(`unknown resample filter '${resample}'`);
  const horiz = precompute(src.width, width, filter);
  const vert = precompute(src.height, height, filter);
  const needH = width !== src.width;
  const needV = height !== src.height;
  const shrinkH = src.height - height;
  const horizontalFirst = !(shrinkH > 0 && shrinkH > (src.width - width) * 2);
  let image = src;
  if (!horizontalFirst) {
    if (needV) image = vertical(image, height, vert, 0);
    if (needH) image = horizontal(image, width, 0, image.height, horiz);
    return image;
  }
  let shift = 0;
  if (needH) {
    const first = vert.bounds[0];
    const last = vert.bounds[height * 2 - 2] + vert.bounds[height * 2 - 1];
    image = horizontal(src, width, first, last - first, horiz);
    shift = first;
  }
  if (needV) image = vertical(image, height, vert, shift);
  return image;
}

/** `image.crop((left, top, left + width, top + height))` inside the image. */
export function crop(src: RGBImage, left: number, top: number, width: number, height: number): RGBImage {
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const from = ((top + y) * src.width + left) * 3;
    out.set(src.data.subarray(from, from + width * 3), y * width * 3);
  }
  return { width, height, data: out };
}
