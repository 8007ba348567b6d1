#!/usr/bin/env node
// Drives the real page in headless Chromium (playwright-core) against a served bundle; one JSON line per image.
//   npm --prefix web-demo run caption  -- --bundle DIR --image F [--image F ...] [--prompt T] [--max-new-tokens N]
//                                         [--backend wasm|webgpu] [--threads N] [--screenshot PNG --device 'Pixel 7']
//                                         [--ignore-eos 1] (always --max-new-tokens tokens: benchmarks)
//   npm --prefix web-demo run classify -- --bundle DIR --image F ... --labels 'a,b,c'
//   npm --prefix web-demo run selftest -- --bundle DIR          (exit 1 when the self-test fails)
// Common: [--server pocketvlm|node] [--result FILE.json] [--timeout SECONDS]. Bad input, a missing browser or a
// refused bundle: one line on stderr, exit 2.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DIST = path.join(HERE, "..", "dist");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];
const WEBGPU_FLAGS = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"];
const REPEATABLE = ["image"];
const children = [];

class Refusal extends Error {}
const refuse = (problem, fix) => { throw new Refusal(`${problem} (fix: ${fix})`); };

function parse(argv) {
  const [command, ...rest] = argv;
  const values = {};
  for (let i = 0; i < rest.length; i++) {
    if (!rest[i].startsWith("--")) refuse(`unexpected argument '${rest[i]}'`, "see web-demo/README.md for the options");
    const name = rest[i].slice(2), value = rest[++i];
    if (value === undefined) refuse(`--${name} needs a value`, "see web-demo/README.md for the options");
    if (REPEATABLE.includes(name)) (values[name] ??= []).push(value); else values[name] = value;
  }
  if (!["caption", "ask", "classify", "selftest"].includes(command)) {
    refuse(`unknown command '${command}'`, "use caption, ask, classify or selftest");
  }
  return { command, ...values, image: values.image ?? [] };
}

function checkInputs(args) {
  if (!args.bundle) refuse("no --bundle given", "pass --bundle DIR (a pocketvlm bundle directory)");
  if (!existsSync(path.join(args.bundle, "manifest.json"))) {
    refuse(`${args.bundle} is not a bundle directory (no manifest.json)`, "pass the --out directory of `pocketvlm export`");
  }
  if (args.command !== "selftest" && !args.image.length) refuse("no --image given", "pass --image FILE (repeatable)");
  for (const file of args.image) {
    if (!existsSync(file) || !statSync(file).isFile()) refuse(`image file not found: ${file}`, "check the path");
    const head = readFileSync(file).subarray(0, 12);
    const isImage = (head[0] === 0x89 && head[1] === 0x50) || (head[0] === 0xff && head[1] === 0xd8) ||
      head.subarray(0, 3).toString() === "GIF" || head.subarray(8, 12).toString() === "WEBP" ||
      head.subarray(0, 2).toString() === "BM";
    if (!isImage) refuse(`${file} is not an image file (PNG, JPEG, WebP, GIF, BMP)`, "pass an image file");
  }
  if (args.command === "classify" && !args.labels) refuse("classify needs --labels 'a,b,c'", "pass --labels");
  if (args.command === "ask" && !args.prompt) refuse("ask needs --prompt QUESTION", "pass --prompt");
  if (!existsSync(path.join(DIST, "index.html"))) {
    refuse("the web demo is not built (no web-demo/dist)", "npm --prefix web-demo ci && npm --prefix web-demo run build");
  }
}

/** Starts a server and resolves with its URL (its first stdout line "serving URL"). */
function startServer(cmd, argv, label, timeoutMs = 60_000) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    let out = "", err = "";
    const timer = setTimeout(() => reject(new Error(`${label} printed no URL in ${timeoutMs / 1000} s`)), timeoutMs);
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/serving (http\S+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    child.stderr.on("data", (d) => { err += d; });
    child.on("error", (e) => { clearTimeout(timer); reject(new Error(`${label}: ${e.message}`)); });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${label} exited with ${code}: ${err.trim().split("\n").pop() ?? ""}`));
    });
  });
}

async function serve(args) {
  const which = args.server ?? "pocketvlm";
  const node = () => startServer(process.execPath, [path.join(HERE, "serve.mjs"), "--bundle", args.bundle,
    "--demo-dir", DIST], "node server");
  if (which === "node") return node();
  if (which !== "pocketvlm") refuse(`unknown --server '${which}'`, "use --server pocketvlm or --server node");
  try {
    return await startServer(process.env.PYTHON ?? "python3", ["-m", "pocketvlm.cli.main", "serve", "--bundle",
      args.bundle, "--port", "0", "--demo-dir", DIST], "pocketvlm serve");
  } catch (error) {
    const line = String(error.message);
    if (/error: .*\(fix:/.test(line)) throw new Refusal(line.replace(/^.*?error: /, "")); // it refused the bundle
    process.stderr.write(`note: pocketvlm serve unavailable (${line}); using the node server\n`);
    return node();
  }
}

async function browser(args) {
  if (!existsSync(CHROMIUM)) {
    refuse(`no Chromium at ${CHROMIUM}`, "apt-get install -y chromium, or set CHROMIUM=/path/to/chrome");
  }
  const { chromium, devices } = await import("playwright-core");
  const flags = [...FLAGS, ...(args.backend === "webgpu" ? WEBGPU_FLAGS : [])];
  let device = {};
  if (args.device) {
    device = devices[args.device];
    if (!device) refuse(`unknown --device '${args.device}'`, "use a Playwright device name such as 'Pixel 7'");
    delete device.defaultBrowserType;
  }
  const userData = mkdtempSync(path.join(os.tmpdir(), "pvlm-chromium-")); // a fresh profile every run
  const context = await chromium.launchPersistentContext(userData, { executablePath: CHROMIUM, args: flags,
    timeout: 60_000, ...device });
  return { launched: context, page: context.pages()[0] ?? await context.newPage() };
}

function within(promise, seconds, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took over ${seconds} s`)), seconds * 1000);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

async function openPage(page, url, args, seconds) {
  const query = new URLSearchParams({ bundle: "/bundle/", autoload: "0", backend: args.backend ?? "wasm",
    ...(args.threads ? { threads: args.threads } : {}) });
  await page.goto(`${url}?${query}`, { timeout: seconds * 1000 });
  await page.waitForFunction(() => window.pocketvlm?.ready, null, { timeout: 60_000 });
  try {
    return await within(page.evaluate(([backend, threads]) => window.pocketvlm.load("/bundle/",
      { backend, threads: threads ? Number(threads) : undefined }), [args.backend ?? "wasm", args.threads]),
    seconds, "loading the bundle");
  } catch (error) {
    const shown = await page.evaluate(() => window.pocketvlm.errorText());
    throw new Refusal(shown ? shown.replace(/Fix: /, " (fix: ") + ")" : String(error.message));
  }
}

async function run(args) {
  checkInputs(args);
  const seconds = Number(args.timeout ?? 900);
  const url = await serve(args);
  const { launched, page } = await browser(args);
  try {
    await openPage(page, url, args, seconds);
    const code = await tasks(page, args, seconds);
    if (args.result) {
      await within(page.evaluate(() => window.pocketvlm.measureMemory()), 60, "measuring memory");
      const result = await page.evaluate(() => window.pocketvlm.result());
      // the page knows the bundle by its URL (/bundle/); the runner knows which directory it served there
      result.bundle.path = path.basename(path.resolve(args.bundle));
      writeFileSync(args.result, JSON.stringify(result, null, 2));
    }
    return code;
  } finally {
    await launched.close();
  }
}

async function tasks(page, args, seconds) {
  if (args.command === "selftest") {
    const report = await within(page.evaluate(() => window.pocketvlm.selftest()), seconds, "the self-test");
    const engine = await page.evaluate(() => window.pocketvlm.result().device);
    console.log(JSON.stringify({ ...report, backend: engine.backend, threads: engine.threads }));
    return report.pass ? 0 : 1;
  }
  for (const file of args.image) {
    const bytes = readFileSync(file).toString("base64");
    if (args.command === "classify") {
      const labels = args.labels.split(",");
      const out = await within(page.evaluate(([b, l, n]) => window.pocketvlm.classify(b, l, n), [bytes, labels, file]),
        seconds, "classify");
      console.log(JSON.stringify({ image: file, labels: out.labels, probabilities: out.probabilities,
        top: out.ranked[0].label, figures: out.figures, backend: out.backend, threads: out.threads }));
      continue;
    }
    const opts = { prompt: args.prompt, maxNewTokens: Number(args["max-new-tokens"] ?? 32), name: path.basename(file),
      ignoreEos: args["ignore-eos"] === "1" };
    const out = await within(page.evaluate(([b, o]) => window.pocketvlm.caption(b, o), [bytes, opts]), seconds, "caption");
    console.log(JSON.stringify({ image: file, text: out.text, token_ids: out.token_ids, stop_reason: out.stop_reason,
      prompt_tokens: out.prompt_tokens, figures: out.figures, backend: out.backend, threads: out.threads }));
  }
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
  return 0;
}

function cleanup() {
  for (const child of children) if (child.exitCode === null) child.kill();
}

let args;
try {
  args = parse(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`error: ${error.message}\n`);
  process.exit(2);
}
run(args).then((code) => { cleanup(); process.exit(code); }, (error) => {
  cleanup();
  const line = error instanceof Refusal ? error.message : String(error?.message ?? error).split("\n")[0];
  process.stderr.write(`error: ${line}\n`);
  process.exit(2);
});
