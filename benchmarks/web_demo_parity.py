"""The web demo against the Python runtime, in headless Chromium on this machine (issue 15's acceptance figures).

    python benchmarks/web_demo_parity.py [--cache DIR] [--images 100] [--exact 16] [--threads 2]
                                         [--out benchmarks/results/web_demo_parity.json]

On the embedded demo's bundles (``pocketvlm demo`` cache) and a tiny Qwen2-VL bundle made here:
- captioner fp32: greedy token ids of the page (wasm) equal to the runtime's on ``--exact`` test images;
- captioner int8 / int4: caption exact-match of the page and of the runtime on ``--images`` test images;
- shapes-clip fp32 / int8: zero-shot top-1 of the page equal to the runtime's on ``--images`` test images;
- tiny Qwen2-VL (random weights) at two image sizes, one non-square: the runtime's tokens;
- WebGPU (SwiftShader, a correctness check) on the fp32 captioner: the wasm backend's tokens;
- the golden self-test in the page for every demo bundle, and on a copy of the fp32 captioner whose vision weights
  were altered (and re-hashed): it must fail at ``vision_encoder``.
Everything runs through ``web-demo/scripts/runner.mjs`` (the served page, its engine, onnxruntime-web) and is written
as a machine-made JSON file with the machine and the tool versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.tamper: the same weight alteration the suite uses

from pocketvlm.cli.demo_cmd import default_cache  # noqa: E402
from pocketvlm.demo.shapes.data import load_split  # noqa: E402
from pocketvlm.demo.shapes.evaluate import MAX_NEW_TOKENS, caption_correct  # noqa: E402
from pocketvlm.demo.shapes.shapes_clip import ZERO_SHOT_LABELS  # noqa: E402
from pocketvlm.export.bundle_writer import tool_versions  # noqa: E402
from pocketvlm.runtime.dual_encoder import DualEncoder  # noqa: E402
from pocketvlm.runtime.generation import GenerationConfig  # noqa: E402
from pocketvlm.runtime.vlm import VisionLanguageModel  # noqa: E402

RUNNER = ROOT / "web-demo" / "scripts" / "runner.mjs"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def browser(command: str, bundle: Path, *args: str, images: list[Path] = (), timeout: int = 3600,
            check: bool = True) -> list[dict[str, Any]]:
    """One runner call (one page load, every image in it) -> its JSON lines."""
    cmd = ["node", str(RUNNER), command, "--bundle", str(bundle), *args]
    for image in images:
        cmd += ["--image", str(image)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and done.returncode not in (0, 1):
        raise SystemExit(f"runner failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def python_captions(bundle: Path, images: list[Path], threads: int) -> list[list[int]]:
    model = VisionLanguageModel.load(bundle, threads=threads)
    config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS)
    return [list(model.generate(str(image), config=config).token_ids) for image in images]


def captioner_rows(cache: Path, samples: list[Any], exact: int, threads: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for quant in ("fp32", "int8", "int4"):
        bundle = cache / "bundles" / f"shapes-captioner-{quant}"
        chosen = samples[:exact] if quant == "fp32" else samples
        paths = [s.path for s in chosen]
        say(f"captioner {quant}: runtime on {len(paths)} images")
        reference = python_captions(bundle, paths, threads)
        say(f"captioner {quant}: page (wasm, {threads} threads) on {len(paths)} images")
        lines = browser("caption", bundle, "--threads", str(threads), "--max-new-tokens", str(MAX_NEW_TOKENS),
                        images=paths)
        page_text = [line["text"] for line in lines]
        model = VisionLanguageModel.load(bundle, threads=threads)
        runtime_text = [model.tokenizer.decode([t for t in ids if t not in model.eos_ids]) for ids in reference]
        rows[quant] = {
            "images": len(paths), "backend": lines[0]["backend"], "threads": lines[0]["threads"],
            "token_ids_equal": sum(line["token_ids"] == ids for line, ids in zip(lines, reference, strict=True)),
            "runtime_exact_match": sum(map(caption_correct, runtime_text, chosen)) / len(chosen),
            "page_exact_match": sum(map(caption_correct, page_text, chosen)) / len(chosen),
            "page_decode_tokens_per_s_median": sorted(line["figures"]["decode_tokens_per_s"] for line in lines
                                                      if line["figures"].get("decode_tokens_per_s"))[len(lines) // 2]
            if any(line["figures"].get("decode_tokens_per_s") for line in lines) else None,
        }
        say(f"captioner {quant}: {rows[quant]}")
    return rows


def clip_rows(cache: Path, samples: list[Any], threads: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    labels = list(ZERO_SHOT_LABELS)
    for quant in ("fp32", "int8"):
        bundle = cache / "bundles" / f"shapes-clip-{quant}"
        model = DualEncoder.load(bundle, threads=threads)
        reference = [preds[0].label for preds in model.classify([str(s.path) for s in samples], labels)]
        lines = browser("classify", bundle, "--threads", str(threads), "--labels", ",".join(labels),
                        images=[s.path for s in samples])
        top = [line["top"] if isinstance(line["top"], str) else line["top"]["label"] for line in lines]
        rows[quant] = {"images": len(samples), "top1_equal": sum(a == b for a, b in zip(top, reference, strict=True))}
        say(f"clip {quant}: {rows[quant]}")
    return rows


def qwen_rows(work: Path, threads: int) -> dict[str, Any]:
    from PIL import Image

    from pocketvlm.export.loop import export_bundle
    from pocketvlm.export.synthetic import build_checkpoint

    checkpoint = build_checkpoint("qwen2_vl", work / "ckpt-qwen2_vl", seed=0, initializer_range=0.5)
    bundle = export_bundle(checkpoint, work / "qwen2_vl-fp32")
    photo = Image.open(load_split("test")[3].path).convert("RGB")
    rows = {}
    for width, height in ((56, 56), (84, 140)):
        path = work / f"qwen-{width}x{height}.png"
        photo.resize((width, height), Image.Resampling.BICUBIC).save(path)
        reference = python_captions(bundle, [path], threads)[0]
        line = browser("caption", bundle, "--threads", str(threads), "--max-new-tokens", str(MAX_NEW_TOKENS),
                       images=[path])[0]
        rows[f"{width}x{height}"] = {"token_ids_equal": line["token_ids"] == reference, "tokens": len(reference)}
        say(f"qwen2_vl {width}x{height}: {rows[f'{width}x{height}']}")
    return rows


def selftest_rows(cache: Path, work: Path) -> dict[str, Any]:
    from tests.tamper import altered_weights

    rows = {}
    for bundle in sorted((cache / "bundles").iterdir()):
        line = browser("selftest", bundle)[0]
        rows[bundle.name] = {"pass": line["pass"], "failed_stage": line["failed_stage"],
                             "errors": {s["name"]: [s["error"], s["limit"]] for s in line["stages"]}}
        say(f"selftest {bundle.name}: {rows[bundle.name]['pass']}")
    bad = altered_weights(cache / "bundles" / "shapes-captioner-fp32", work / "altered-vision", "vision_encoder")
    line = browser("selftest", bad)[0]
    rows["shapes-captioner-fp32 (vision weights altered, re-hashed)"] = {
        "pass": line["pass"], "failed_stage": line["failed_stage"],
        "errors": {s["name"]: [s["error"], s["limit"]] for s in line["stages"]}}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--exact", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default="captioner,clip,qwen,webgpu,selftest")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "web_demo_parity.json")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    samples = list(load_split("test")[: args.images])
    result: dict[str, Any] = {"kind": "web_demo_parity", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime()),
                              "machine": {"platform": platform.platform(), "cpu": platform.processor()},
                              "tools": {**tool_versions(), **web_versions()}, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "captioner" in parts:
            result["captioner"] = captioner_rows(args.cache, samples, args.exact, args.threads)
        if "clip" in parts:
            result["clip"] = clip_rows(args.cache, samples, args.threads)
        if "qwen" in parts:
            result["qwen2_vl_tiny"] = qwen_rows(work, args.threads)
        if "webgpu" in parts:
            bundle = args.cache / "bundles" / "shapes-captioner-fp32"
            image = [samples[0].path]
            wasm = browser("caption", bundle, "--max-new-tokens", "4", images=image)[0]
            gpu = browser("caption", bundle, "--backend", "webgpu", "--max-new-tokens", "4", images=image)[0]
            result["webgpu_swiftshader"] = {"backend": gpu["backend"], "wasm_tokens": wasm["token_ids"],
                                            "webgpu_tokens": gpu["token_ids"],
                                            "equal": gpu["token_ids"] == wasm["token_ids"]}
            say(f"webgpu: {result['webgpu_swiftshader']}")
        if "selftest" in parts:
            result["selftest"] = selftest_rows(args.cache, work)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    say(f"written: {args.out}")


def web_versions() -> dict[str, str]:
    lock = json.loads((ROOT / "web-demo" / "package-lock.json").read_text())
    packages = lock.get("packages", {})
    names = ("onnxruntime-web", "@huggingface/jinja", "@huggingface/tokenizers", "playwright-core")
    found = {name: packages.get(f"node_modules/{name}", {}).get("version", "?") for name in names}
    chromium = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True).stdout.strip()
    return {**found, "chromium": chromium, "node": subprocess.run(["node", "--version"], capture_output=True,
                                                                  text=True).stdout.strip()}


if __name__ == "__main__":
    main()
