/** Image files -> RGBA pixels in the browser: the size is read from the file header before decoding (PNG, JPEG,
 * GIF, WebP, BMP) and checked against the pixel limit; decoding is createImageBitmap with no colour conversion and
 * no premultiplication (as PIL reads pixels), EXIF orientation applied, read back through an OffscreenCanvas. */

import { EngineError } from "../engine/errors.js";
import { checkPixels, type RGBAPixels } from "../engine/image.js";

/** Width and height from the header, or null when the format is not one we can read the header of. */
export function headerSize(b: Uint8Array): [number, number] | null {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (b.length >= 24 && b[0] === 0x89 && b[1] === 0x50) return [dv.getUint32(16), dv.getUint32(20)];
  if (b.length >= 10 && b[0] === 0x47 && b[1] === 0x49) return [dv.getUint16(6, true), dv.getUint16(8, true)];
  if (b.length >= 26 && b[0] === 0x42 && b[1] === 0x4d) return [dv.getInt32(18, true), Math.abs(dv.getInt32(22, true))];
  if (b.length >= 30 && String.fromCharCode(...b.subarray(8, 12)) === "WEBP") {
    const kind = String.fromCharCode(...b.subarray(12, 16));
    if (kind === "VP8X") return [1 + (b[24] | (b[25] << 8) | (b[26] << 16)), 1 + (b[27] | (b[28] << 8) | (b[29] << 16))];
    if (kind === "VP8L") { const v = dv.getUint32(21, true); return [1 + (v & 0x3fff), 1 + ((v >> 14) & 0x3fff)]; }
    if (kind === "VP8 ") return [dv.getUint16(26, true) & 0x3fff, dv.getUint16(28, true) & 0x3fff];
  }
  if (b[0] === 0xff && b[1] === 0xd8) {
    for (let i = 2; i + 9 < b.length;) {
      if (b[i] !== 0xff) { i++; continue; }
      const marker = b[i + 1];
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return [dv.getUint16(i + 7), dv.getUint16(i + 5)];
      }
      i += 2 + dv.getUint16(i + 2);
    }
  }
  return null;
}

export function defaultMaxPixels(): number {
  const mobile = /Android|iPhone|iPad|Mobile/i.test(navigator.userAgent);
  const memory = (navigator as { deviceMemory?: number }).deviceMemory;
  return mobile || (memory !== undefined && memory <= 4) ? 24_000_000 : 64_000_000;
}

export async function decodeImage(bytes: Uint8Array, name: string, maxPixels = defaultMaxPixels()): Promise<RGBAPixels> {
  const size = headerSize(bytes);
  if (size) checkPixels(size[0], size[1], maxPixels, name);
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes as Uint8Array<ArrayBuffer>]),
      { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image" });
  } catch {
    throw new EngineError("image", `${name} is not an image this browser can decode`,
      "pick a JPEG, PNG, WebP or GIF photo");
  }
  try {
    checkPixels(bitmap.width, bitmap.height, maxPixels, name);
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    if (!context) throw new EngineError("image", "this browser has no 2D canvas", "use a current Chrome, Safari or Firefox");
    context.drawImage(bitmap, 0, 0);
    const data = context.getImageData(0, 0, bitmap.width, bitmap.height, { colorSpace: "srgb" });
    return { width: data.width, height: data.height, data: data.data };
  } finally {
    bitmap.close();
  }
}
