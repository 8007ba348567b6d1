/** Tokenizer (tokenizers.js on the bundle's tokenizer.json) and chat-template rendering (jinja) against the Python
 * runtime's TextTokenizer and ImmutableSandboxedEnvironment, on the tiny fixtures and the demo bundles present. */

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";

import { ChatTemplate } from "../src/engine/template.js";
import { TextTokenizer } from "../src/engine/text.js";
import { tinyBundle } from "./fixtures.js";
import { python } from "./python.js";

const DEMO = path.join(os.homedir(), ".cache/pocketvlm/demo/bundles");
const bundles = () => [
  ...["idefics3", "qwen2_vl", "clip", "siglip"].map(tinyBundle),
  ...["shapes-captioner-int4", "shapes-clip-int8"].map((b) => path.join(DEMO, b)).filter((d) => existsSync(d)),
];

const TEXTS = ["a photo of a cat.", "Hello  world\n\ttabs", "what is the red shape?", "émoji 🚀 and ünïcode — ok",
  "<|im_start|>user\n<image>Describe this image.<|im_end|>\n", "numbers 12345 and 3.14", "  leading spaces", "",
  "a".repeat(300)];

const PY_TOKENIZE = `
import json
from pathlib import Path
from pocketvlm.runtime.text import TextConfig, TextTokenizer
result = []
for case in data:
    manifest = json.loads((Path(case["bundle"]) / "manifest.json").read_text())
    config = TextConfig.from_json(manifest["tokenizer"])
    tok = TextTokenizer(Path(case["bundle"]) / config.file, config)
    plain = [tok.encode_plain(t) for t in case["texts"]]
    batch = tok.encode([t for t in case["texts"] if t])
    ids = [i for row in plain for i in row][:40] + list(range(0, 400, 7))
    stream = tok.stream()
    result.append({"plain": plain, "ids": batch["input_ids"].tolist(), "mask": batch["attention_mask"].tolist(),
                   "decode": [tok.decode(row) for row in plain] + [tok.decode(ids)], "probe": ids,
                   "pieces": [stream.push(i) for i in ids]})
`;

test("tokenizer encode / encode_plain / decode / streaming equal the Python runtime's", () => {
  const cases = bundles().map((bundle) => ({ bundle, texts: TEXTS }));
  const want = python<{ plain: number[][]; ids: number[][]; mask: number[][]; decode: string[]; probe: number[];
    pieces: string[] }[]>(PY_TOKENIZE, cases);
  cases.forEach((c, i) => {
    const manifest = JSON.parse(readFileSync(path.join(c.bundle, "manifest.json"), "utf-8"));
    const tok = new TextTokenizer(JSON.parse(readFileSync(path.join(c.bundle, manifest.tokenizer.file), "utf-8")),
      manifest.tokenizer);
    const name = path.basename(c.bundle);
    const plain = TEXTS.map((t) => tok.encodePlain(t));
    assert.deepEqual(plain, want[i].plain, `${name} encode_plain`);
    const batch = tok.encode(TEXTS.filter((t) => t));
    const rows = (t: { dims: number[]; data: BigInt64Array | Float32Array }) =>
      Array.from({ length: t.dims[0] }, (_, r) => Array.from(t.data.slice(r * t.dims[1], (r + 1) * t.dims[1]), Number));
    assert.deepEqual(rows(batch.input_ids), want[i].ids, `${name} encode (padding, truncation)`);
    assert.deepEqual(rows(batch.attention_mask), want[i].mask, `${name} attention_mask`);
    // decoding is used for VLM output only; dual-encoder tokenizers are not decoded by the runtime (and tokenizers.js
    // turns CLIP's "</w>" suffix into spaces where the Rust tokenizer without a decoder keeps it: see the README)
    if (!manifest.chat_template) return;
    assert.deepEqual([...plain.map((r) => tok.decode(r)), tok.decode(want[i].probe)], want[i].decode, `${name} decode`);
    const stream = tok.stream();
    assert.deepEqual(want[i].probe.map((id) => stream.push(id)), want[i].pieces, `${name} streamed pieces`);
  });
});

test("chat templates render as the Python runtime renders them", () => {
  const prompts = ["Describe this image.", "What colour is the {shape}?\nAnswer briefly.", "  spaces  "];
  const vlms = bundles().filter((b) => JSON.parse(readFileSync(path.join(b, "manifest.json"), "utf-8")).chat_template);
  assert.ok(vlms.length >= 2);
  const want = python<string[][]>(`
import json
from pathlib import Path
from jinja2.sandbox import ImmutableSandboxedEnvironment
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
result = []
for bundle in data["bundles"]:
    m = json.loads((Path(bundle) / "manifest.json").read_text())
    t = env.from_string((Path(bundle) / m["chat_template"]).read_text(encoding="utf-8"))
    rows = []
    for p in data["prompts"]:
        for image in (True, False):
            content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": p}]
            rows.append(t.render(messages=[{"role": "user", "content": content}], add_generation_prompt=True))
    result.append(rows)
`, { bundles: vlms, prompts });
  vlms.forEach((b, i) => {
    const m = JSON.parse(readFileSync(path.join(b, "manifest.json"), "utf-8"));
    const template = new ChatTemplate(readFileSync(path.join(b, m.chat_template), "utf-8"));
    const ours = prompts.flatMap((p) => [template.render(p, true), template.render(p, false)]);
    assert.deepEqual(ours, want[i], path.basename(b));
  });
});
