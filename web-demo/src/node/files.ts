/** Node-only helpers for the engine CLI and the tests: bundle files from disk, PNG decoding with pngjs. */

import { promises as fs, statSync } from "node:fs";
import path from "node:path";

import pngjs from "pngjs";

import { EngineError } from "../engine/errors.js";
import { checkPixels, DEFAULT_MAX_PIXELS, type RGBAPixels } from "../engine/image.js";
import type { BundleSource, Progress } from "../engine/source.js";

export class DirSource implements BundleSource {
  readonly label: string;

  constructor(private readonly dir: string) {
    this.label = dir;
    let isDir = false;
    try {
      isDir = statSync(dir).isDirectory();
    } catch {
      isDir = false;
    }
    if (!isDir) {
      throw new EngineError("bundle", `bundle directory not found: ${dir}`,
        "pass the --out directory of `pocketvlm export`");
    }
  }

  async read(file: string, onProgress?: Progress): Promise<Uint8Array> {
    try {
      const bytes = new Uint8Array(await fs.readFile(path.join(this.dir, file)));
      onProgress?.(bytes.length, bytes.length);
      return bytes;
    } catch {
      throw new EngineError("bundle", file === "manifest.json"
        ? `${this.dir} has no manifest.json: not a pocketvlm bundle, or an export that did not finish`
        : `bundle file missing: ${file}`,
      file === "manifest.json" ? "run `pocketvlm export` again into this directory"
        : "copy the whole bundle directory again, or re-export it");
    }
  }
}

/** PNG bytes -> RGBA pixels (the size is checked from the header before the pixels are decoded). */
export function decodePng(bytes: Uint8Array, name: string, maxPixels = DEFAULT_MAX_PIXELS): RGBAPixels {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (bytes.length < 24 || signature.some((b, i) => bytes[i] !== b)) {
    throw new EngineError("image", `${name} is not a PNG image (the Node engine CLI decodes PNG only)`,
      "pass a PNG file (convert other formats first; the web page decodes JPEG/WebP too)");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  checkPixels(view.getUint32(16), view.getUint32(20), maxPixels, name);
  try {
    const png = pngjs.PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    return { width: png.width, height: png.height, data: new Uint8Array(png.data) };
  } catch (error) {
    throw new EngineError("image", `${name} is corrupt or truncated (${String(error)})`, "re-save the image");
  }
}

export async function readImage(file: string): Promise<RGBAPixels> {
  let bytes: Uint8Array;
  try {
    const stat = await fs.stat(file);
    if (!stat.isFile()) throw new EngineError("image", `image path is not a file: ${file}`, "pass an image file");
    bytes = new Uint8Array(await fs.readFile(file));
  } catch (error) {
    if (error instanceof EngineError) throw error;
    throw new EngineError("image", `image file not found: ${file}`, "check the path");
  }
  return decodePng(bytes, file);
}
