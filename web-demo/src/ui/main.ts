/** Wires the page: bundle loading (URL / folder / files), backend and threads, image from gallery / camera, the four
 * tasks, measures and the result file; and window.pocketvlm for automation (the headless runner drives this). */

import { EngineError } from "../engine/errors.js";
import { estimateMemory } from "../engine/manifest.js";
import type { BackendName } from "../engine/session.js";
import { App, type LoadOptions } from "./app.js";
import { Camera, cameraAvailable } from "./camera.js";
import { $, clearError, showBars, showError, showInfo, showMeasures, showPreview, showProgress, showSelfTest,
  streamInto } from "./view.js";

const app = new App();
const params = new URLSearchParams(location.search);
let task = "caption";
let busy = false;

async function guarded<T>(work: () => Promise<T>): Promise<T | undefined> {
  if (busy) return undefined;
  busy = true;
  $<HTMLButtonElement>("run").disabled = true;
  clearError();
  try {
    return await work();
  } catch (error) {
    showError(error);
    return undefined;
  } finally {
    busy = false;
    $<HTMLButtonElement>("run").disabled = !app.engine;
  }
}

function loadOptions(): LoadOptions {
  return { backend: $<HTMLSelectElement>("backend").value as BackendName,
    threads: Number($<HTMLSelectElement>("threads").value), force: $<HTMLInputElement>("force").checked,
    onProgress: (e) => showProgress(e.phase === "download" ? "Loading" : "Verifying sha256", e.file, e.loaded, e.total) };
}

async function loadBundle(source: string | File[]): Promise<void> {
  const engine = await app.load(source, loadOptions());
  const m = engine.bundle.manifest;
  const est = estimateMemory(m);
  showInfo([["family", m.family], ["task", String(m.task)], ["source", engine.bundle.label],
    ["quantization", Object.entries(m.components).map(([n, c]) => `${n} ${c.quantization.method}`).join(", ")],
    ["model files", `${(est.componentBytes / 1e6).toFixed(1)} MB`], ["ran on", `${engine.backend}, ${engine.threads} thread(s)`],
    ["self-test", m.golden ? "golden record present" : "no golden record"]]);
  $("chip").textContent = `${m.family} · ${engine.backend.split(" ")[0]}`;
  $("chip").className = "chip ready";
  $("progress").hidden = true;
  selectTask(engine.kind === "dual" ? "classify" : "caption");
}

function selectTask(name: string): void {
  task = name;
  document.querySelectorAll<HTMLElement>(".tab").forEach((t) => t.classList.toggle("active", t.dataset.task === name));
  document.querySelectorAll<HTMLElement>("[data-panel]").forEach((p) => { p.hidden = p.dataset.panel !== name; });
  $("run").textContent = { caption: "Caption", ask: "Ask", classify: "Classify", selftest: "Run self-test" }[name]!;
}

const maxNew = () => Math.max(1, Number($<HTMLInputElement>("max-new").value) || 32);

async function runTask(): Promise<void> {
  if (task === "selftest") {
    const report = await app.selftest();
    showSelfTest(report);
    return;
  }
  if (task === "classify") {
    const out = await app.classify($<HTMLTextAreaElement>("labels").value.split(","));
    showBars(out.ranked);
    await afterRun(out.figures);
    return;
  }
  const question = $<HTMLInputElement>("question").value;
  if (task === "ask" && !question.trim()) throw new EngineError("input", "the question is empty", "type a question");
  const stream = streamInto();
  const out = await app.caption({ prompt: task === "ask" ? question : undefined, maxNewTokens: maxNew(),
    onText: stream.push });
  stream.done();
  await afterRun(out.figures);
}

async function afterRun(figures: Record<string, number>, measure = true): Promise<void> {
  app.quickMemory();
  const result = app.result() as { figures: Record<string, number> };
  const page = { bundle_download_ms: result.figures.bundle_download_ms, bundle_verify_ms: result.figures.bundle_verify_ms,
    session_load_ms: result.figures.session_load_ms };
  const engine = app.engine!;
  const extra = (): [string, string][] => [["Backend", engine.backend], ["Threads", String(engine.threads)],
    ["Peak memory", app.memory.bytes ? `${(app.memory.bytes / 1e6).toFixed(0)} MB` : "n/a"],
    ["Memory source", app.memory.source]];
  showMeasures({ ...figures, ...page }, extra());
  if (!measure) return;
  await app.measureMemory();
  showMeasures({ ...figures, ...page }, extra());
}

async function pickImage(input: HTMLInputElement): Promise<void> {
  const file = input.files?.[0];
  if (!file) return;
  const image = await app.setImage(new Uint8Array(await file.arrayBuffer()), file.name);
  showPreview(image, `${file.name} · ${image.width}×${image.height}`);
}

function setupSettings(): void {
  const caps = app.caps!;
  const backend = $<HTMLSelectElement>("backend");
  if (caps.webgpu) backend.add(new Option(`WebGPU (${caps.webgpu})`.slice(0, 40), "webgpu"));
  if (params.get("backend")) backend.value = params.get("backend")!;
  const threads = $<HTMLSelectElement>("threads");
  for (let n = 1; n <= Math.max(caps.cores, 1); n++) threads.add(new Option(String(n), String(n)));
  threads.value = params.get("threads") ?? String(app.defaultThreads());
  threads.disabled = !caps.isolated;
  $("env-note").textContent = [caps.isolated ? "cross-origin isolated: wasm threads on" :
    "not cross-origin isolated: 1 wasm thread (serve with COOP/COEP for threads)",
  caps.webgpu ? `WebGPU adapter: ${caps.webgpu}` : "no WebGPU adapter", `${caps.cores} cores`,
  caps.deviceMemoryGiB ? `${caps.deviceMemoryGiB} GiB reported` : "device memory not reported"].join(" · ");
  if (cameraAvailable()) $("live").hidden = false;
}

function wire(): void {
  const camera = new Camera($<HTMLVideoElement>("video"));
  $("load-url").onclick = () => guarded(() => loadBundle($<HTMLInputElement>("bundle-url").value || "/bundle/"));
  for (const id of ["pick-dir", "pick-files"]) {
    const input = $<HTMLInputElement>(id);
    input.onchange = () => guarded(() => loadBundle([...(input.files ?? [])]));
  }
  for (const id of ["pick-image", "take-photo"]) {
    const input = $<HTMLInputElement>(id);
    input.onchange = () => guarded(() => pickImage(input));
  }
  $("live").onclick = () => guarded(async () => { $("video").hidden = false; $("snap").hidden = false; await camera.start(); });
  $("snap").onclick = () => guarded(async () => {
    app.image = camera.snapshot();
    showPreview(app.image, `camera · ${app.image.width}×${app.image.height}`);
    camera.stop();
    $("video").hidden = true;
    $("snap").hidden = true;
  });
  document.querySelectorAll<HTMLElement>(".tab").forEach((t) => { t.onclick = () => selectTask(t.dataset.task!); });
  $("run").onclick = () => guarded(runTask);
  $("download").onclick = () => guarded(async () => {
    const blob = new Blob([JSON.stringify(app.result(), null, 2)], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `pocketvlm-web-${app.engine!.bundle.manifest.family}-${Date.now()}.json`;
    a.click();
  });
}

const b64 = (text: string) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

/** For automation (scripts/runner.mjs): the real page, the real engine. Image bytes go in as base64. */
function expose(): void {
  const api = {
    ready: true,
    load: (url: string, opts: LoadOptions = {}) => guarded(async () => {
      await loadBundle(url);
      return { backend: app.engine!.backend, threads: app.engine!.threads };
    }).then((v) => v ?? Promise.reject(new Error($("message").textContent ?? "load failed"))),
    setImage: async (base64: string, name = "image") => {
      const image = await app.setImage(b64(base64), name);
      showPreview(image, `${name} · ${image.width}×${image.height}`);
      return { width: image.width, height: image.height };
    },
    caption: async (base64: string, opts: { prompt?: string; maxNewTokens?: number; ignoreEos?: boolean;
      name?: string; } = {}) => {
      await api.setImage(base64, opts.name);
      selectTask(opts.prompt ? "ask" : "caption");
      if (opts.prompt) $<HTMLInputElement>("question").value = opts.prompt;
      const stream = streamInto();
      const out = await app.caption({ prompt: opts.prompt, maxNewTokens: opts.maxNewTokens, ignoreEos: opts.ignoreEos,
        onText: stream.push });
      stream.done();
      await afterRun(out.figures, false);
      return out;
    },
    classify: async (base64: string, labels: string[], name = "image") => {
      await api.setImage(base64, name);
      selectTask("classify");
      const out = await app.classify(labels);
      showBars(out.ranked);
      await afterRun(out.figures, false);
      return out;
    },
    selftest: async () => {
      selectTask("selftest");
      const report = await app.selftest();
      showSelfTest(report);
      return report;
    },
    measureMemory: async () => { await app.measureMemory(); return app.memory; },
    result: () => app.result(),
    errorText: () => ($("message").hidden ? null : $("message").textContent),
  };
  (window as unknown as { pocketvlm: typeof api }).pocketvlm = api;
}

async function main(): Promise<void> {
  await app.init();
  setupSettings();
  wire();
  expose();
  const bundle = params.get("bundle");
  $<HTMLInputElement>("bundle-url").value = bundle ?? "/bundle/";
  if (bundle && params.get("autoload") !== "0") await guarded(() => loadBundle(bundle));
}

main().catch(showError);
