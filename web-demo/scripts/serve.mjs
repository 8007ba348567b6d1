#!/usr/bin/env node
// A small static server for the runner when `pocketvlm serve` is not available: web-demo/dist at /, a bundle
// directory at /bundle/, with the headers a cross-origin isolated page needs (COOP same-origin, COEP require-corp).
// Prints "serving http://127.0.0.1:PORT/" as its first stdout line.  Usage: serve.mjs --bundle DIR [--port N]
import { createReadStream, statSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const args = process.argv.slice(2);
const opt = (name, fallback) => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : fallback);
const DIST = path.resolve(opt("demo-dir", fileURLToPath(new URL("../dist", import.meta.url))));
const BUNDLE = opt("bundle") ? path.resolve(opt("bundle")) : null;
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
  ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json", ".png": "image/png",
  ".onnx": "application/octet-stream", ".jinja": "text/plain; charset=utf-8" };

function resolve(urlPath) {
  const clean = decodeURIComponent(urlPath.split("?")[0]);
  const [root, rest] = clean.startsWith("/bundle/") && BUNDLE ? [BUNDLE, clean.slice(8)] : [DIST, clean.slice(1)];
  const file = path.resolve(root, rest || "index.html");
  return file.startsWith(root + path.sep) || file === root ? file : null;
}

const server = createServer((req, res) => {
  const headers = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache" };
  const file = resolve(req.url ?? "/");
  let stat = null;
  try { stat = file && statSync(file); } catch { stat = null; }
  if (!stat || !stat.isFile()) {
    res.writeHead(404, headers).end("not found");
    return;
  }
  res.writeHead(200, { ...headers, "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream",
    "Content-Length": stat.size });
  createReadStream(file).pipe(res);
});
server.listen(Number(opt("port", "0")), opt("host", "127.0.0.1"), () => {
  process.stdout.write(`serving http://127.0.0.1:${server.address().port}/\n`);
});
