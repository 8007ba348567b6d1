/** Where bundle files come from: a URL (fetch, with progress) or files the user picked (File / Blob objects). The
 * Node file-system source lives in src/node/. */

import { EngineError } from "./errors.js";

export type Progress = (loaded: number, total: number) => void;

export interface BundleSource {
  /** Shown in messages: the URL or "picked files (N)". */
  readonly label: string;
  read(path: string, onProgress?: Progress): Promise<Uint8Array>;
}

async function readBody(response: Response, expected: number, onProgress?: Progress): Promise<Uint8Array> {
  const total = Number(response.headers.get("content-length")) || expected;
  if (!response.body) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  let out = new Uint8Array(Math.max(total, 1));
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (loaded + value.length > out.length) {
      const grown = new Uint8Array(Math.max(out.length * 2, loaded + value.length));
      grown.set(out.subarray(0, loaded));
      out = grown;
    }
    out.set(value, loaded);
    loaded += value.length;
    onProgress?.(loaded, total);
  }
  return loaded === out.length ? out : out.slice(0, loaded);
}

export class UrlSource implements BundleSource {
  readonly label: string;
  private readonly base: string;
  private readonly sizes = new Map<string, number>();

  constructor(base: string) {
    this.base = base.endsWith("/") ? base : `${base}/`;
    this.label = this.base;
  }

  expectSize(path: string, bytes: number): void {
    this.sizes.set(path, bytes);
  }

  async read(path: string, onProgress?: Progress): Promise<Uint8Array> {
    const url = new URL(path.split("/").map(encodeURIComponent).join("/"), this.base).toString();
    let response: Response;
    try {
      response = await fetch(url, { cache: "no-cache" });
    } catch (error) {
      throw new EngineError("bundle", `cannot fetch ${url} (${String(error)})`,
        "check the bundle URL and that the server is running");
    }
    if (!response.ok) {
      throw new EngineError("bundle", `fetching ${url} gave HTTP ${response.status}`,
        path === "manifest.json" ? "point ?bundle= at a directory holding manifest.json" :
          "copy the whole bundle directory to the server again");
    }
    return readBody(response, this.sizes.get(path) ?? 0, onProgress);
  }
}

/** Files picked with <input type=file webkitdirectory> (webkitRelativePath "dir/sub/file") or a plain multi-file
 * picker (name only): keyed by the path below the folder that holds manifest.json. */
export class FileSource implements BundleSource {
  readonly label: string;
  private readonly files = new Map<string, Blob>();

  constructor(files: Iterable<File>) {
    const list = [...files];
    const manifest = list.find((f) => (f.webkitRelativePath || f.name).split("/").pop() === "manifest.json");
    const root = manifest?.webkitRelativePath ? manifest.webkitRelativePath.split("/").slice(0, -1).join("/") : "";
    for (const file of list) {
      const rel = file.webkitRelativePath || file.name;
      const key = root && rel.startsWith(`${root}/`) ? rel.slice(root.length + 1) : rel;
      this.files.set(key, file);
      if (!this.files.has(file.name)) this.files.set(file.name, file);
    }
    this.label = `picked files (${list.length})`;
  }

  async read(path: string, onProgress?: Progress): Promise<Uint8Array> {
    const blob = this.files.get(path) ?? this.files.get(path.split("/").pop() as string);
    if (!blob) {
      throw new EngineError("bundle", `the picked files have no ${path}`,
        path === "manifest.json" ? "pick the bundle folder (or all its files, manifest.json included)" :
          "pick every file of the bundle folder, not only some");
    }
    const bytes = new Uint8Array(await blob.arrayBuffer());
    onProgress?.(bytes.length, bytes.length);
    return bytes;
  }
}
