/** sha256 of bundle bytes: WebCrypto where the page has it (secure contexts, Node), else @noble/hashes (plain-HTTP
 * pages on a LAN address have no crypto.subtle). */

import { sha256 as nobleSha256 } from "@noble/hashes/sha2.js";

function hex(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

export function hashImplementation(): "webcrypto" | "noble" {
  return globalThis.crypto?.subtle ? "webcrypto" : "noble";
}

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const subtle = globalThis.crypto?.subtle;
  if (subtle) {
    const view = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
    return hex(new Uint8Array(await subtle.digest("SHA-256", view as Uint8Array<ArrayBuffer>)));
  }
  return hex(nobleSha256(bytes));
}
