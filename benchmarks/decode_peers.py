"""Decode speed of a VLM bundle's text decoder against its peers, in one run, on the same prompt and threads.

- **pocketvlm**: the bundle's ``text_decoder`` through pocketvlm's own runtime (``VisionLanguageModel``).
- **onnxruntime-genai int4**: the same text model (the checkpoint's language-model weights as a Qwen2ForCausalLM
  checkpoint, the architecture the model builder supports) built with ``onnxruntime_genai.models.builder -p int4
  -e cpu`` and its defaults, run by ``og.Generator``.
- **PyTorch eager fp32**: the checkpoint loaded with transformers and ``generate()``: where a user starts from.

Each engine decodes greedily from the same prompt ids for the same number of new tokens; the decode rate is
(new tokens - 1) / (time of the last token - time of the first). The roofline is this machine's STREAM-like bandwidth
over the bytes each engine reads per token (weights, less tables that are only gathered, plus the KV cache at the
mean context). Writes ``results/decode_peers_<name>.json``.

    pip install -e ".[bench]"
    python benchmarks/decode_peers.py --checkpoint /tmp/pocketvlm-full/qwen2_vl_2b-ckpt \\
        --bundle /tmp/pocketvlm-full/qwen2_vl_2b-int4-b128 --work /tmp/pocketvlm-peers
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.runtime.bench import machine, memory_bandwidth, peak_rss_bytes, runtime_versions

TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
GATHER_OPS = ("Gather", "GatherBlockQuantized")


def text_checkpoint(vlm: Path, out: Path) -> Path:
    """The VLM checkpoint's language model as a Qwen2ForCausalLM checkpoint (same tensors, same names)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if (out / "config.json").is_file():
        return out
    config = json.loads((vlm / "config.json").read_text())
    text = dict(config["text_config"])
    rope = text.pop("rope_parameters", {}) or {}
    text.pop("layer_types", None)
    text.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rope_theta=rope.get("rope_theta", 1e6),
                tie_word_embeddings=config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    tensors = {}
    for path in sorted(vlm.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                if key.startswith(("model.", "lm_head.")) and not key.startswith("model.visual"):
                    tensors[key] = handle.get_tensor(key)
    if not any(key.startswith("model.layers.") for key in tensors):
        raise SystemExit(f"{vlm}: no language-model tensors named model.layers.* (re-save with transformers 5)")
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in TEXT_FILES:
        if (vlm / name).is_file():
            shutil.copy(vlm / name, out / name)
    (out / "config.json").write_text(json.dumps(text, indent=2) + "\n")
    return out


def build_genai(text_ckpt: Path, out: Path) -> dict[str, Any]:
    """onnxruntime-genai's model builder, int4 CPU, its default options; wall time and peak RSS recorded."""
    if (out / "genai_config.json").is_file():
        return {"built": "reused", "dir": str(out)}
    started = time.perf_counter()
    code = ("import resource, runpy, sys; sys.argv = ['builder'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('onnxruntime_genai.models.builder', run_name='__main__')\n"
            "finally:\n    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)")
    done = subprocess.run([sys.executable, "-c", code, "-i", str(text_ckpt), "-o", str(out), "-p", "int4", "-e",
                           "cpu", "-c", str(out.with_name(out.name + "-cache"))],
                          check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = int(done.stdout.split("PEAK_RSS_KB")[-1].split()[0]) * 1024
    shutil.rmtree(out.with_name(out.name + "-cache"), ignore_errors=True)
    return {"built": "now", "dir": str(out), "build_wall_s": round(time.perf_counter() - started, 1),
            "build_peak_rss_bytes": peak}


def decode_weight_bytes(onnx_path: Path) -> int:
    """Bytes of the initializers a decode step reads: all of them, less tables read only by Gather ops (one row)."""
    import onnx
    from onnx import external_data_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    users: dict[str, list[tuple[str, int]]] = {}
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            users.setdefault(name, []).append((node.op_type, slot))
    total = 0
    for init in model.graph.initializer:
        if users.get(init.name) and all(op in GATHER_OPS and slot == 0 for op, slot in users[init.name]):
            continue
        if external_data_helper.uses_external_data(init):
            total += int(external_data_helper.ExternalDataInfo(init).length or 0)
        else:
            total += len(init.raw_data) or int(np.prod(init.dims)) * 4
    return total


def token_rates(stamps: list[list[float]]) -> dict[str, float]:
    """Per run: timestamps of the start and of each new token -> first-token time and decode tokens/s."""
    decode = [(len(t) - 2) / (t[-1] - t[1]) for t in stamps]
    first = [t[1] - t[0] for t in stamps]
    return {"decode_tokens_per_s": statistics.median(decode), "decode_tokens_per_s_min": min(decode),
            "decode_tokens_per_s_max": max(decode), "first_token_ms": statistics.median(first) * 1e3,
            "runs": len(stamps)}


def run_pocketvlm(bundle: Path, ids: np.ndarray, new: int, runs: int, threads: int) -> dict[str, Any]:
    from pocketvlm.runtime.generation import GenerationConfig
    from pocketvlm.runtime.vlm import VisionLanguageModel

    model = VisionLanguageModel.load(bundle, threads=threads)
    config = GenerationConfig(max_new_tokens=new, ignore_eos=True)
    stamps, tokens = [], []
    for run in range(runs + 1):
        times = [time.perf_counter()]
        result = model.generate_ids(ids, None, config, on_token=lambda _, t=times: t.append(time.perf_counter()))
        if run:  # the first run warms up
            stamps.append(times)
            tokens = result.token_ids
    spec = model.bundle.component("text_decoder")
    path = model.bundle.path / spec.file
    layers, heads, dim = (model.decoder[k] for k in ("num_layers", "kv_heads", "head_dim"))
    capacity = len(ids) + new  # the runtime's KV buffers span the whole capacity on every step
    return {**token_rates(stamps), "tokens": [int(t) for t in tokens],
            "bytes_per_token": {"weights": decode_weight_bytes(path),
                                "kv_cache": 2 * layers * heads * dim * 4 * capacity},
            "engine": "pocketvlm runtime (onnxruntime CPUExecutionProvider)",
            "quantization": model.bundle.manifest["components"]["text_decoder"]["quantization"]}


def run_genai(model_dir: Path, ids: np.ndarray, new: int, runs: int, threads: int) -> dict[str, Any]:
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    stamps, tokens = [], []
    for run in range(runs + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + new, min_length=len(ids) + new, do_sample=False)
        generator = og.Generator(model, params)
        times = [time.perf_counter()]
        generator.append_tokens(ids.astype(np.int32)[None, :])
        out = []
        while len(out) < new and not generator.is_done():
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
            times.append(time.perf_counter())
        if run:
            stamps.append(times)
            tokens = out
        del generator
    genai = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    capacity = len(ids) + new
    return {**token_rates(stamps), "tokens": tokens,
            "bytes_per_token": {"weights": decode_weight_bytes(model_dir / "model.onnx"),
                                "kv_cache": 2 * genai["num_hidden_layers"] * genai["num_key_value_heads"]
                                * genai["head_size"] * 4 * (len(ids) + new // 2)},
            "engine": f"onnxruntime-genai {og.__version__} (CPU), builder -p int4 -e cpu defaults",
            "kv_capacity": capacity}


def run_torch(checkpoint: Path, ids: np.ndarray, new: int, runs: int, threads: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForImageTextToText

    torch.set_num_threads(threads)
    model = AutoModelForImageTextToText.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    inputs = torch.from_numpy(ids)[None, :]

    class Stamps:  # a generate() streamer: put() gets the prompt once, then each new token
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    stamps, tokens = [], []
    for run in range(runs + 1):
        streamer = Stamps()
        with torch.inference_mode():
            out = model.generate(inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, streamer=streamer)
        if run:
            stamps.append(streamer.times)
            tokens = [int(t) for t in out[0, len(ids):]]
    text = model.config.text_config
    # the language model's parameters: the embedding table counted once, as the LM head that reads all of it (tied;
    # an untied head has the same size and the table is then only gathered)
    weights = sum(p.numel() * p.element_size() for p in model.model.language_model.parameters())
    return {**token_rates(stamps), "tokens": tokens,
            "bytes_per_token": {"weights": weights,
                                "kv_cache": 2 * text.num_hidden_layers * text.num_key_value_heads
                                * (text.hidden_size // text.num_attention_heads) * 4 * (len(ids) + new // 2)},
            "engine": f"PyTorch {torch.__version__} eager fp32, transformers generate()"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the VLM checkpoint the bundle came from")
    parser.add_argument("--bundle", type=Path, required=True, help="pocketvlm bundle (int4) of that checkpoint")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pocketvlm-peers"))
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per engine, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default="pocketvlm,genai,torch")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    config = json.loads((args.checkpoint / "config.json").read_text())
    vocab = int(config.get("text_config", config)["vocab_size"])
    # the same seeded prompt ids for every engine (ordinary tokens of the synthetic tokenizers' range)
    ids = np.random.default_rng(0).integers(10, min(500, vocab), args.prompt_tokens).astype(np.int64)
    result: dict[str, Any] = {
        "kind": "decode_peers", "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(), "tools": runtime_versions(), "threads": args.threads,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "checkpoint": args.checkpoint.name,
        "bundle": args.bundle.name, "engines": {},
    }
    if "genai" in engines:
        print("building the onnxruntime-genai int4 peer", flush=True)
        text = text_checkpoint(args.checkpoint, args.work / "text-checkpoint")
        result["genai_build"] = build_genai(text, args.work / "genai-int4")
    print("measuring memory bandwidth", flush=True)
    result["bandwidth"] = memory_bandwidth(threads=args.threads)
    best = max(result["bandwidth"]["copy_gbs"], result["bandwidth"]["add_gbs"]) * 1e9
    runners = {"pocketvlm": lambda: run_pocketvlm(args.bundle, ids, args.new_tokens, args.runs, args.threads),
               "genai": lambda: run_genai(args.work / "genai-int4", ids, args.new_tokens, args.runs, args.threads),
               "torch": lambda: run_torch(args.checkpoint, ids, args.new_tokens, args.runs, args.threads)}
    for name in engines:
        print(f"{name}: 1 warm-up + {args.runs} runs of {args.prompt_tokens} + {args.new_tokens} tokens", flush=True)
        figures = runners[name]()
        per_token = sum(figures["bytes_per_token"].values())
        figures["roofline_tokens_per_s"] = best / per_token
        figures["fraction_of_roofline"] = figures["decode_tokens_per_s"] / figures["roofline_tokens_per_s"]
        result["engines"][name] = figures
        print(f"  {figures['decode_tokens_per_s']:.2f} tok/s, {figures['fraction_of_roofline']:.0%} of roofline "
              f"({per_token / 1e9:.3f} GB/token)", flush=True)
        gc.collect()
    got = result["engines"]
    if "pocketvlm" in got and "genai" in got:
        result["pocketvlm_vs_genai"] = got["pocketvlm"]["decode_tokens_per_s"] / got["genai"]["decode_tokens_per_s"]
    if "pocketvlm" in got and "torch" in got:
        result["pocketvlm_vs_torch"] = got["pocketvlm"]["decode_tokens_per_s"] / got["torch"]["decode_tokens_per_s"]
    result["peak_rss_bytes"] = peak_rss_bytes()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"decode_peers_{args.bundle.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("engines",)}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
