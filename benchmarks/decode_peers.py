"""Decode speed of a VLM bundle's text decoder against its peers, in one run, on the same prompt and threads.

- **pocketvlm**: the bundle's ``text_decoder`` through pocketvlm's own runtime (``VisionLanguageModel``).
- **onnxruntime-genai int4**: the same text model (the checkpoint's language-model weights as a Qwen2ForCausalLM
  checkpoint, the architecture the model builder supports) built with ``onnxruntime_genai.models.builder -p int4
  -e cpu`` and its defaults, run by ``og.Generator``. ``genai:key=value,...`` in ``--engines`` adds a build with
  those builder ``--extra_options`` (e.g. ``genai:block_size=128``, the block size of pocketvlm's bundle).
- **PyTorch eager fp32**: the checkpoint loaded with transformers and ``generate()``: where a user starts from.

Each engine decodes greedily from the same prompt ids for the same number of new tokens; the decode rate is
(new tokens - 1) / (time of the last token - time of the first). The ONNX Runtime engines run in interleaved rounds
(each once per round, medians over rounds), so drift on a shared machine does not favour one of them. The roofline
is this machine's STREAM-like bandwidth (the best of a measurement before and after) over the bytes each engine reads
per token (weights, less tables that are only gathered, plus the KV cache). Writes
``results/decode_peers_<name>.json``.

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


def build_genai(text_ckpt: Path, out: Path, options: str = "") -> dict[str, Any]:
    """onnxruntime-genai's model builder, int4 CPU, its defaults plus ``options`` (``key=value,...``); wall time and
    peak RSS recorded."""
    if (out / "genai_config.json").is_file():
        return {"built": "reused", "dir": str(out), "extra_options": options}
    started = time.perf_counter()
    code = ("import resource, runpy, sys; sys.argv = ['builder'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('onnxruntime_genai.models.builder', run_name='__main__')\n"
            "finally:\n    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)")
    extra = ["--extra_options", *options.split(",")] if options else []
    done = subprocess.run([sys.executable, "-c", code, "-i", str(text_ckpt), "-o", str(out), "-p", "int4", "-e",
                           "cpu", "-c", str(out.with_name(out.name + "-cache")), *extra],
                          check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = int(done.stdout.split("PEAK_RSS_KB")[-1].split()[0]) * 1024
    shutil.rmtree(out.with_name(out.name + "-cache"), ignore_errors=True)
    return {"built": "now", "dir": str(out), "extra_options": options,
            "build_wall_s": round(time.perf_counter() - started, 1), "build_peak_rss_bytes": peak}


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


class PocketvlmEngine:
    """The bundle's text decoder through pocketvlm's runtime."""

    def __init__(self, bundle: Path, ids: np.ndarray, new: int, threads: int) -> None:
        from pocketvlm.runtime.generation import GenerationConfig
        from pocketvlm.runtime.vlm import VisionLanguageModel

        self.model = VisionLanguageModel.load(bundle, threads=threads)
        self.ids, self.config = ids, GenerationConfig(max_new_tokens=new, ignore_eos=True)

    def generate(self) -> tuple[list[float], list[int]]:
        times = [time.perf_counter()]
        result = self.model.generate_ids(self.ids, None, self.config,
                                         on_token=lambda _: times.append(time.perf_counter()))
        return times, [int(t) for t in result.token_ids]

    def describe(self) -> dict[str, Any]:
        bundle = self.model.bundle
        layers, heads, dim = (self.model.decoder[k] for k in ("num_layers", "kv_heads", "head_dim"))
        capacity = len(self.ids) + self.config.max_new_tokens  # the runtime's KV buffers: whole capacity each step
        return {"bytes_per_token": {"weights": decode_weight_bytes(bundle.path / bundle.component("text_decoder").file),
                                    "kv_cache": 2 * layers * heads * dim * 4 * capacity},
                "engine": "pocketvlm runtime (onnxruntime CPUExecutionProvider)",
                "quantization": bundle.manifest["components"]["text_decoder"]["quantization"]}


class GenaiEngine:
    """An onnxruntime-genai model folder run by ``og.Generator``, greedy, exactly ``new`` tokens."""

    def __init__(self, folder: Path, ids: np.ndarray, new: int, threads: int, options: str = "") -> None:
        import onnxruntime_genai as og

        self.og, self.folder, self.ids, self.new, self.options = og, folder, ids, new, options
        config = og.Config(str(folder))
        config.clear_providers()
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)

    def generate(self) -> tuple[list[float], list[int]]:
        params = self.og.GeneratorParams(self.model)
        length = len(self.ids) + self.new
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        generator = self.og.Generator(self.model, params)
        times, out = [time.perf_counter()], []
        generator.append_tokens(self.ids.astype(np.int32)[None, :])
        while len(out) < self.new and not generator.is_done():
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
            times.append(time.perf_counter())
        return times, out

    def describe(self) -> dict[str, Any]:
        decoder = json.loads((self.folder / "genai_config.json").read_text())["model"]["decoder"]
        kv = 2 * decoder["num_hidden_layers"] * decoder["num_key_value_heads"] * decoder["head_size"] * 4
        return {"bytes_per_token": {"weights": decode_weight_bytes(self.folder / "model.onnx"),
                                    "kv_cache": kv * (len(self.ids) + self.new // 2)},
                "engine": f"onnxruntime-genai {self.og.__version__} (CPU), builder -p int4 -e cpu "
                          + (f"--extra_options {self.options}" if self.options else "defaults")}


class TorchEngine:
    """The checkpoint in transformers, fp32, ``generate()``: where a user starts from."""

    def __init__(self, checkpoint: Path, ids: np.ndarray, new: int, threads: int) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        torch.set_num_threads(threads)
        self.torch, self.ids, self.new = torch, ids, new
        self.model = AutoModelForImageTextToText.from_pretrained(str(checkpoint), dtype=torch.float32).eval()

    def generate(self) -> tuple[list[float], list[int]]:
        times: list[float] = []

        class Stamps:  # a generate() streamer: put() gets the prompt once, then each new token
            def put(self, value: Any) -> None:
                times.append(time.perf_counter())

            def end(self) -> None:
                pass

        with self.torch.inference_mode():
            out = self.model.generate(self.torch.from_numpy(self.ids)[None, :], max_new_tokens=self.new,
                                      min_new_tokens=self.new, do_sample=False, streamer=Stamps())
        return times, [int(t) for t in out[0, len(self.ids):]]

    def describe(self) -> dict[str, Any]:
        text = self.model.config.text_config
        # the language model's parameters: the embedding table counted once, as the LM head that reads all of it
        # (tied; an untied head has the same size and the table is then only gathered)
        weights = sum(p.numel() * p.element_size() for p in self.model.model.language_model.parameters())
        kv = 2 * text.num_hidden_layers * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 4
        return {"bytes_per_token": {"weights": weights, "kv_cache": kv * (len(self.ids) + self.new // 2)},
                "engine": f"PyTorch {self.torch.__version__} eager fp32, transformers generate()"}


def measure(engines: dict[str, Any], runs: int, say: Any) -> dict[str, dict[str, Any]]:
    """One warm-up each, then ``runs`` rounds that run every engine once in turn, so that a slow stretch of this
    (shared) machine lands on all of them alike rather than on whichever ran then."""
    stamps: dict[str, list[list[float]]] = {name: [] for name in engines}
    tokens: dict[str, list[int]] = {}
    for name, engine in engines.items():
        say(f"{name}: warm-up")
        engine.generate()
    for round_ in range(runs):
        for name, engine in engines.items():
            times, tokens[name] = engine.generate()
            stamps[name].append(times)
            say(f"round {round_ + 1}/{runs} {name}: {(len(times) - 2) / (times[-1] - times[1]):.2f} tok/s")
    return {name: {**token_rates(stamps[name]), "tokens": tokens[name], **engine.describe()}
            for name, engine in engines.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the VLM checkpoint the bundle came from")
    parser.add_argument("--bundle", type=Path, required=True, help="pocketvlm bundle (int4) of that checkpoint")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pocketvlm-peers"))
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (each engine once per round)")
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
    builds = {name: name.partition(":")[2] for name in engines if name.split(":")[0] == "genai"}
    if builds:
        text = text_checkpoint(args.checkpoint, args.work / "text-checkpoint")
        result["genai_builds"] = {}
        for name, options in builds.items():
            print(f"building the onnxruntime-genai int4 peer {name}", flush=True)
            folder = args.work / ("genai-int4" + (f"-{options.replace('=', '').replace(',', '-')}" if options else ""))
            result["genai_builds"][name] = build_genai(text, folder, options)
    print("measuring memory bandwidth", flush=True)
    result["bandwidth"] = memory_bandwidth(threads=args.threads)
    best = max(result["bandwidth"]["copy_gbs"], result["bandwidth"]["add_gbs"]) * 1e9
    say = lambda message: print(message, flush=True)  # noqa: E731
    ort_engines: dict[str, Any] = {}
    if "pocketvlm" in engines:
        ort_engines["pocketvlm"] = PocketvlmEngine(args.bundle, ids, args.new_tokens, args.threads)
    for name, options in builds.items():
        ort_engines[name] = GenaiEngine(Path(result["genai_builds"][name]["dir"]), ids, args.new_tokens,
                                        args.threads, options)
    measured = measure(ort_engines, args.runs, say) if ort_engines else {}
    ort_engines.clear()
    say("measuring memory bandwidth again")
    result["bandwidth_after"] = memory_bandwidth(threads=args.threads)
    best = max(best, result["bandwidth_after"]["copy_gbs"] * 1e9, result["bandwidth_after"]["add_gbs"] * 1e9)
    gc.collect()
    if "torch" in engines:  # 10x slower and 8 GB: measured after the others, alone
        measured.update(measure({"torch": TorchEngine(args.checkpoint, ids, args.new_tokens, args.threads)},
                                args.runs, say))
    for name in engines:
        figures = measured[name]
        per_token = sum(figures["bytes_per_token"].values())
        figures["roofline_tokens_per_s"] = best / per_token
        figures["fraction_of_roofline"] = figures["decode_tokens_per_s"] / figures["roofline_tokens_per_s"]
        result["engines"][name] = figures
        print(f"{name}: {figures['decode_tokens_per_s']:.2f} tok/s, {figures['fraction_of_roofline']:.0%} of "
              f"roofline ({per_token / 1e9:.3f} GB/token)", flush=True)
    got = result["engines"]
    for name in builds:
        if "pocketvlm" in got:
            key = "pocketvlm_vs_" + name.replace(":", "_").replace("=", "").replace(",", "_")
            result[key] = got["pocketvlm"]["decode_tokens_per_s"] / got[name]["decode_tokens_per_s"]
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
