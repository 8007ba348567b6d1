/**
 * The engine under Node (onnxruntime-web's wasm build, the same engine code as the page), for tests and for
 * comparing with the Python runtime:
 *   node scripts/engine.mjs caption  --bundle DIR --image F.png [--image ...] [--prompt T] [--max-new-tokens N] [--threads N]
 *   node scripts/engine.mjs ask      --bundle DIR --image F.png --prompt QUESTION [...]
 *   node scripts/engine.mjs classify --bundle DIR --image F.png [...] --labels 'a,b,c'
 *   node scripts/engine.mjs selftest --bundle DIR
 * One JSON line per image (selftest: one line); errors: one line on stderr, exit 2; a failed self-test exits 1.
 */

import { cpus } from "node:os";

import * as ort from "onnxruntime-web";

import { Engine } from "../engine/engine.js";
import { EngineError } from "../engine/errors.js";
import { parseArgs, intArg, many, one, type Parsed } from "./args.js";
import { decodePng, DirSource, readImage } from "./files.js";

const USAGE = "usage: engine.mjs caption|ask|classify|selftest --bundle DIR [--image F.png ...] [--prompt T] " +
  "[--labels 'a,b'] [--max-new-tokens N] [--threads N]";

function say(line: unknown): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

async function open(args: Parsed): Promise<Engine> {
  const dir = one(args, "bundle");
  if (!dir) throw new EngineError("input", "no --bundle given", "pass --bundle DIR (a pocketvlm bundle directory)");
  const threads = intArg(args, "threads", 0);
  return Engine.open(ort, new DirSource(dir), { backend: "wasm", threads,
    defaultThreads: Math.min(4, cpus().length), force: true });
}

async function images(args: Parsed) {
  const files = many(args, "image");
  if (!files.length) throw new EngineError("input", "no --image given", "pass --image FILE.png (repeatable)");
  return Promise.all(files.map(async (file) => ({ file, pixels: await readImage(file) })));
}

async function main(argv: string[]): Promise<number> {
  let args: Parsed;
  try {
    args = parseArgs(argv, ["image"]);
  } catch (error) {
    throw new EngineError("input", String((error as Error).message), USAGE);
  }
  if (!["caption", "ask", "classify", "selftest"].includes(args.command)) {
    throw new EngineError("input", `unknown command '${args.command}'`, USAGE);
  }
  const inputs = args.command === "selftest" ? [] : await images(args);
  const engine = await open(args);
  if (args.command === "selftest") {
    const report = await engine.selftest(async (bytes, name) => decodePng(bytes, name));
    say({ ...report, backend: engine.backend, threads: engine.threads });
    return report.pass ? 0 : 1;
  }
  if (args.command === "classify") {
    const labels = (one(args, "labels") ?? "").split(",");
    const out = await engine.classify(inputs.map((i) => i.pixels), labels);
    out.forEach((row, i) => say({ image: inputs[i].file, labels: row.labels, probabilities: row.probabilities,
      top: row.ranked[0].label, figures: row.figures, backend: row.backend, threads: row.threads }));
    return 0;
  }
  const prompt = one(args, "prompt");
  if (args.command === "ask" && !prompt) throw new EngineError("input", "ask needs --prompt QUESTION", USAGE);
  const maxNewTokens = intArg(args, "max-new-tokens", 32);
  for (const input of inputs) {
    const out = await engine.caption(input.pixels, { prompt, maxNewTokens });
    say({ image: input.file, ...out });
  }
  return 0;
}

main(process.argv.slice(2)).then((code) => process.exit(code), (error) => {
  const line = error instanceof EngineError ? error.oneLine() : `${String(error?.stack ?? error)}`;
  process.stderr.write(`error: ${line}\n`);
  process.exit(2);
});
