/** onnxruntime-web for the page: its wasm/mjs files are served with the page from ./ort/ (copied there by the
 * build), never from a CDN. */

import * as ort from "onnxruntime-web";

export const WASM_PATHS = new URL("./ort/", document.baseURI).href;
export { ort };
