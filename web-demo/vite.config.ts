import { copyFileSync, mkdirSync } from "node:fs";
import path from "node:path";

import { defineConfig, type Plugin } from "vite";

// onnxruntime-web's wasm and its loader are served with the page from ./ort/ (ort.env.wasm.wasmPaths), never a CDN
const ORT_FILES = ["ort-wasm-simd-threaded.jsep.wasm", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.wasm",
  "ort-wasm-simd-threaded.mjs"];

function copyOrt(): Plugin {
  return {
    name: "copy-onnxruntime-web",
    writeBundle(options) {
      const out = path.join(options.dir ?? "dist", "ort");
      mkdirSync(out, { recursive: true });
      for (const file of ORT_FILES) copyFileSync(path.join("node_modules/onnxruntime-web/dist", file), path.join(out, file));
    },
  };
}

export default defineConfig({
  base: "./",
  build: { outDir: "dist", emptyOutDir: true, target: "es2022", chunkSizeWarningLimit: 2048 },
  plugins: [copyOrt()],
  optimizeDeps: { exclude: ["onnxruntime-web"] },
});
