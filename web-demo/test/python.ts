/** Runs a Python snippet (the reference: PIL, tokenizers, jinja2, pocketvlm.runtime) with JSON in and out. */

import { execFileSync } from "node:child_process";

export const PYTHON = process.env.PYTHON ?? "python3";

/** `code` reads `data` (the parsed stdin JSON) and assigns `result`; returns `result` as parsed JSON. */
export function python<T>(code: string, data: unknown): T {
  const script = `import json, sys\ndata = json.load(sys.stdin)\n${code}\nprint(json.dumps(result))\n`;
  const out = execFileSync(PYTHON, ["-c", script], {
    input: JSON.stringify(data),
    maxBuffer: 1 << 30,
    encoding: "utf-8",
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = out.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]) as T;
}

/** A seeded pseudo-random generator for test inputs (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomRGBA(width: number, height: number, seed: number, opaque = false): Uint8Array {
  const next = rng(seed);
  const data = new Uint8Array(width * height * 4);
  for (let i = 0; i < data.length; i++) {
    const alphaByte = i % 4 === 3;
    if (alphaByte && opaque) data[i] = 255;
    else if (alphaByte) data[i] = [0, 255, Math.floor(next() * 256)][Math.floor(next() * 3)];
    else data[i] = Math.floor(next() * 256);
  }
  return data;
}

export const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString("base64");
export const unb64 = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, "base64"));
