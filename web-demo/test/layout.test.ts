/** The engine stays apart from the UI (no DOM globals: it runs under Node) and every source file stays under 600
 * lines. */

import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { ROOT } from "./fixtures.js";

const files = (dir: string): string[] => readdirSync(path.join(ROOT, dir)).map((f) => path.join(ROOT, dir, f));

test("engine modules use no DOM globals and import nothing from the UI", () => {
  for (const file of files("src/engine")) {
    const code = readFileSync(file, "utf-8").replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, "");
    for (const name of ["document", "window", "HTMLElement", "OffscreenCanvas", "navigator", "createImageBitmap"]) {
      // a global use: not a property (`.window`) nor an object key / optional field (`window?:`, `window:`)
      assert.ok(!new RegExp(`(?<![.\\w$])${name}\\b(?!\\??:)`).test(code), `${path.basename(file)} uses ${name}`);
    }
    assert.ok(!/from "\.\.\/ui\//.test(code), `${path.basename(file)} imports the UI`);
  }
});

test("every source file is under 600 lines", () => {
  for (const dir of ["src/engine", "src/ui", "src/node", "scripts", "test"]) {
    for (const file of files(dir)) {
      const lines = readFileSync(file, "utf-8").split("\n").length;
      assert.ok(lines < 600, `${path.relative(ROOT, file)}: ${lines} lines`);
    }
  }
});
