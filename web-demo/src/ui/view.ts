/** DOM rendering helpers: the message box, progress, bundle info, outputs and the measures table. */

import { EngineError } from "../engine/errors.js";
import type { SelfTestReport } from "../engine/golden.js";
import type { RGBAPixels } from "../engine/image.js";

export const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

function el(tag: string, text = "", cls = ""): HTMLElement {
  const node = document.createElement(tag);
  if (text) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

export function showError(error: unknown): void {
  const box = $("message");
  box.replaceChildren();
  if (error instanceof EngineError) {
    box.append(el("b", error.problem), el("span", `Fix: ${error.fix}`));
  } else {
    box.append(el("b", "Something went wrong"), el("span", String((error as Error)?.message ?? error)));
  }
  box.hidden = false;
  box.scrollIntoView({ block: "nearest", behavior: "smooth" });
}

export function clearError(): void {
  $("message").hidden = true;
}

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(bytes < 1e7 ? 2 : 0)} MB`;

export function showProgress(phase: string, file: string, loaded: number, total: number): void {
  const box = $("progress");
  box.hidden = false;
  (box.firstElementChild as HTMLElement).style.width = `${total ? (100 * loaded) / total : 0}%`;
  (box.lastElementChild as HTMLElement).textContent = `${phase} ${file} — ${mb(loaded)} / ${mb(total)}`;
}

export function showInfo(rows: [string, string][]): void {
  const dl = $("bundle-info");
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  dl.hidden = false;
}

export function showPreview(image: RGBAPixels, note: string): void {
  const canvas = $<HTMLCanvasElement>("preview");
  canvas.width = image.width;
  canvas.height = image.height;
  const data = new ImageData(new Uint8ClampedArray(image.data), image.width, image.height);
  canvas.getContext("2d")!.putImageData(data, 0, 0);
  canvas.hidden = false;
  canvas.classList.toggle("small", Math.max(image.width, image.height) < 256);
  $("image-note").textContent = note;
}

export function streamInto(): { push: (piece: string) => void; done: () => void } {
  const out = $("output");
  out.replaceChildren();
  const span = el("span", "", "cursor");
  out.append(span);
  return { push: (piece) => { span.textContent += piece; }, done: () => { span.className = ""; } };
}

export function showBars(ranked: { label: string; score: number }[]): void {
  const box = el("div", "", "bars");
  for (const { label, score } of ranked) {
    const row = el("div", "", "bar-row"), track = el("div", "", "track"), fill = el("div", "", "fill");
    fill.style.width = `${(100 * score).toFixed(1)}%`;
    track.append(fill, el("span", label, "label"));
    row.append(track, el("span", `${(100 * score).toFixed(1)}%`));
    box.append(row);
  }
  $("output").replaceChildren(box);
}

export function showSelfTest(report: SelfTestReport): void {
  const table = el("table", "", "stages");
  for (const s of report.stages) {
    const tr = el("tr");
    tr.append(el("td", s.name), el("td", s.pass ? "PASS" : "FAIL", s.pass ? "pass" : "fail"), el("td", s.detail));
    table.append(tr);
  }
  const head = el("p", report.pass ? "Self-test PASS" : `Self-test FAIL at ${report.failed_stage}`,
    report.pass ? "pass" : "fail");
  const source = el("p", `golden: ${report.golden.family} ${report.golden.quantization}, recorded with ` +
    `${report.golden.recorded_with}`, "note");
  $("output").replaceChildren(head, table, source);
}

const LABELS: Record<string, [string, string]> = {
  preprocess_ms: ["Preprocess", "ms"], image_encode_ms: ["Vision encode", "ms"],
  time_to_first_token_ms: ["Time to first token", "ms"], prefill_tokens_per_s: ["Prefill", "tok/s"],
  decode_tokens_per_s: ["Decode", "tok/s"], prompt_tokens: ["Prompt tokens", ""], new_tokens: ["New tokens", ""],
  text_encode_ms: ["Text encode", "ms"], bundle_download_ms: ["Bundle download", "ms"],
  bundle_verify_ms: ["sha256 verify", "ms"], session_load_ms: ["Session load", "ms"],
};

export function showMeasures(figures: Record<string, number>, extra: [string, string][]): void {
  const table = $("measures");
  table.replaceChildren();
  for (const [key, value] of Object.entries(figures)) {
    const [name, unit] = LABELS[key] ?? [key, ""];
    const tr = el("tr");
    const shown = Number.isInteger(value) || value >= 100 ? value.toFixed(0) : value.toFixed(1);
    tr.append(el("td", name), el("td", `${shown} ${unit}`.trim()));
    table.append(tr);
  }
  for (const [name, value] of extra) {
    const tr = el("tr");
    tr.append(el("td", name), el("td", value));
    table.append(tr);
  }
  $("measures-card").hidden = false;
}
