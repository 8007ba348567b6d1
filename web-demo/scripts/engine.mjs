#!/usr/bin/env node
// The web engine under Node: runs build/src/node/cli.js (compiled by `npm --prefix web-demo run build:engine`).
import { existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";

const cli = fileURLToPath(new URL("../build/src/node/cli.js", import.meta.url));
if (!existsSync(cli)) {
  process.stderr.write("error: the engine is not built (fix: npm --prefix web-demo ci && npm --prefix web-demo run build)\n");
  process.exit(2);
}
await import(pathToFileURL(cli).href);
