"""Core ML (``.mlpackage`` mlprogram) export of one component with coremltools, and its weight compression.

- Conversion: the family's export-friendly wrapper (shared with ONNX and LiteRT) goes through ``torch.export`` and
  ``coremltools.convert`` as an mlprogram for iOS 18 with fp16 compute, at static shapes (the LiteRT target's:
  encoders at batch 1, text encoders at the tokenizer's ``max_length``, Qwen-family vision at one image grid), which
  is what the Neural Engine wants. ``torch.export`` leaves ``aten.alias`` nodes that coremltools 9.0 does not
  translate; they are removed first (an alias is its input).
- Compression (coremltools ``optimize.coreml``), per component: ``fp16`` (none beyond the fp16 program), ``int8``
  (linear symmetric, per output channel), ``int4`` (linear symmetric, per block of ``block_size`` input channels,
  iOS 18) and ``palette4`` (4-bit k-means look-up tables, one per group of 16 output channels). As on the other
  targets, the first and last weight layers and embedding tables stay at 8 bits under int4 and palette4
  (``first_layer_bits`` / ``last_layer_bits``), and the manifest says which weights were left uncompressed.
- Each component can convert in its own process (``isolate``), so the peak memory of a large model's conversion is
  one component's, and a crash in coremltools cannot take the parent's staging directories with it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.hf_quiet import quiet_tool
from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.registry import ComponentDef
from pocketvlm.export.static_shapes import LOOP_DIMS, named_module
from pocketvlm.runtime.errors import ExportError, QuantizationError

DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18")
DEFAULT_TARGET = "iOS18"
PALETTE_GROUP = 16  # output channels sharing one palette (per_grouped_channel)
WEIGHT_THRESHOLD = 2048  # coremltools' default: smaller constants (norms, biases) stay fp16
COMPRESSED_OPS = ("linear", "conv", "matmul")  # ops whose constant weight decides first / last layer
COREML_ONLY = ("palette4",)


def check_coreml_spec(spec: QuantSpec, component: str, deployment_target: str = DEFAULT_TARGET) -> None:
    """Refuse, by name, what the Core ML target cannot do: never a silent fallback."""
    if deployment_target not in DEPLOYMENT_TARGETS:
        raise QuantizationError(f"unknown deployment target '{deployment_target}'",
                                f"use one of {', '.join(DEPLOYMENT_TARGETS)}")
    defaults = QuantSpec(method=spec.method).resolved(component)
    for name in ("symmetric", "accuracy_level", "int8_weight_only"):
        if getattr(spec, name) != getattr(defaults, name):
            raise QuantizationError(f"quantization setting '{name}' is not available for --target coreml "
                                    f"({component})", f"drop '{name}' from the config for --target coreml")
    if spec.method == "int4" and deployment_target != "iOS18":
        raise QuantizationError(f"int4 (per-block) weights need iOS 18; the deployment target is {deployment_target}",
                                "use --deployment-target iOS18, or int8 / palette4 for older iOS")
    if spec.method == "palette4" and deployment_target != "iOS18":
        raise QuantizationError(f"grouped palette4 needs iOS 18; the deployment target is {deployment_target}",
                                "use --deployment-target iOS18, or int8 for older iOS")
    if spec.gptq and spec.method != "int4":
        raise QuantizationError(f"gptq applies to int4, not {spec.method} ({component})", "drop gptq or use int4")
    if spec.method == "fp32":
        raise QuantizationError(f"{component}: fp32 is not a Core ML method here (mlprograms compute in fp16 on the "
                                "Neural Engine and GPU)", "use fp16, int8, int4 or palette4 for --target coreml")


def _strip_aliases(program: Any) -> Any:
    """``aten.alias`` is an identity coremltools 9.0 does not translate: point its users at its input."""
    import torch

    graph = program.graph_module.graph
    for node in list(graph.nodes):
        aliases = (torch.ops.aten.alias.default, torch.ops.aten.alias_copy.default)
        if node.op == "call_function" and node.target in aliases:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph.lint()
    program.graph_module.recompile()
    return program


def _quiet() -> Any:
    """coremltools prints progress bars and version warnings; keep the CLI's output ours."""
    return quiet_tool("coremltools")


# Normalisation statistics stay in float32: a decoder's residual stream can exceed fp16's square root (SmolLM2-135M
# reaches 25,600 here), so x * x overflows fp16 (65,504) inside RMSNorm and the row normalises to zero. These ops,
# and the add / mul that consume their result, compute in float32; everything else in fp16.
FP32_OPS = ("pow", "reduce_mean", "reduce_sum_square", "rsqrt", "sqrt", "real_div", "inverse")


def keep_fp16(op: Any) -> bool:
    """coremltools' ``op_selector``: False keeps an op in float32 (see ``FP32_OPS``)."""
    if op.op_type in FP32_OPS:
        return False
    if op.op_type in ("add", "mul"):
        producers = [getattr(getattr(v, "op", None), "op_type", None) for v in op.inputs.values()]
        return not any(p in ("reduce_mean", "rsqrt", "reduce_sum_square", "sqrt") for p in producers)
    return True


def compute_precision(ct: Any) -> Any:
    return ct.transform.FP16ComputePrecision(op_selector=keep_fp16)


def _ct_dtype(dtype: Any) -> Any:
    import torch

    if dtype in (torch.int64, torch.int32):
        return np.int32  # Core ML has no int64 tensors; ids and positions fit int32
    if dtype == torch.bool:
        return np.bool_
    return np.float32


def convert_component(model: Any, component: ComponentDef, path: Path, feeds: dict[str, Any],
                      deployment_target: str = DEFAULT_TARGET) -> None:
    """fp16-compute mlprogram of ``component`` at the static shapes of ``feeds`` (name -> example tensor)."""
    import torch

    try:
        import coremltools as ct
    except ImportError as exc:
        raise ExportError("--target coreml needs coremltools, which is not installed",
                          'pip install "pocketvlm[coreml]"') from exc

    in_defs, out_defs = component.signature(model.config)
    module = named_module(component.wrap(model).eval(), in_defs, out_defs)
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(module, (), {k: feeds[k] for k in (t.name for t in in_defs)})
            program = _strip_aliases(program.run_decompositions())
            inputs = [ct.TensorType(name=t.name, shape=tuple(feeds[t.name].shape), dtype=_ct_dtype(feeds[t.name].dtype))
                      for t in in_defs]
            outputs = [ct.TensorType(name=t.name, dtype=np.float32) for t in out_defs]
            mlmodel = ct.convert(program, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                                 minimum_deployment_target=getattr(ct.target, deployment_target),
                                 compute_precision=compute_precision(ct), skip_model_load=True)
            mlmodel.save(str(path))
    except Exception as exc:  # torch.export and coremltools raise many types (NotImplementedError for unknown ops)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"Core ML conversion of {component.name} failed: {first[:300]}",
                          "report the model config; the ONNX target may support it (--target onnx)") from exc


def _weight_consts(mlmodel: Any) -> tuple[list[str], list[str]]:
    """(const names feeding weight ops in program order, const names of gathered tables)."""
    block = mlmodel.get_spec().mlProgram.functions["main"]
    block = block.block_specializations[block.opset]
    const_names = {op.outputs[0].name for op in block.operations if op.type == "const"}
    weights, tables = [], []
    for operation in block.operations:
        key = {"linear": "weight", "conv": "weight", "matmul": "y", "gather": "x"}.get(operation.type)
        if key is None or key not in operation.inputs:
            continue
        name = operation.inputs[key].arguments[0].name
        if name in const_names:
            (tables if operation.type == "gather" else weights).append(name)
    return weights, tables


def _op_config(spec: QuantSpec, bits: int) -> Any:
    import coremltools.optimize.coreml as cto

    if spec.method == "palette4" and bits == 4:
        return cto.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_grouped_channel",
                                      group_size=PALETTE_GROUP, weight_threshold=WEIGHT_THRESHOLD)
    if bits == 4:
        return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                           block_size=spec.block_size, weight_threshold=WEIGHT_THRESHOLD)
    return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                       weight_threshold=WEIGHT_THRESHOLD)


def compress_package(source: Path, target: Path, spec: QuantSpec) -> dict[str, Any]:
    """Write ``target`` from the fp16 package ``source`` with ``spec``'s weight compression; returns what was done
    (for the manifest): which weights are 8-bit by policy and which stayed fp16."""
    import shutil

    if spec.method == "fp16":
        shutil.copytree(source, target)
        return {"eight_bit": [], "fp16_weights": []}
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    mlmodel = ct.models.MLModel(str(source), skip_model_load=True)
    weights, tables = _weight_consts(mlmodel)
    eight_bit: list[str] = []
    if spec.method in ("int4", "palette4"):
        eight_bit = list(tables)
        if weights and spec.first_layer_bits == 8:
            eight_bit.append(weights[0])
        if weights and spec.last_layer_bits == 8:
            eight_bit.append(weights[-1])
    bits = 8 if spec.method == "int8" else 4
    config = cto.OptimizationConfig(global_config=_op_config(spec, bits),
                                    op_name_configs={name: _op_config(spec, 8) for name in dict.fromkeys(eight_bit)})
    try:
        with _quiet():
            if spec.method == "palette4":
                # palettize the 4-bit weights, then linearly quantize the ones kept at 8 bits
                four = cto.OptimizationConfig(global_config=_op_config(spec, 4),
                                              op_name_configs={name: None for name in eight_bit})
                compressed = cto.palettize_weights(mlmodel, four)
                if eight_bit:
                    compressed = cto.linear_quantize_weights(compressed, cto.OptimizationConfig(
                        global_config=None, op_name_configs={name: _op_config(spec, 8) for name in eight_bit}))
            else:
                compressed = cto.linear_quantize_weights(mlmodel, config)
            compressed.save(str(target))
    except Exception as exc:  # coremltools validates configs with ValueError / NotImplementedError
        raise QuantizationError(f"coremltools could not apply {spec.method} to {source.name}: "
                                f"{str(exc).splitlines()[0][:300]}", "try fp16 or int8 for this component") from exc
    return {"eight_bit": sorted(set(eight_bit)), "fp16_weights": _uncompressed(target)}


def _uncompressed(package: Path) -> list[str]:
    """Constant weights of weight ops that stayed fp16 (below the size threshold or not divisible into blocks)."""
    import coremltools as ct

    weights, tables = _weight_consts(ct.models.MLModel(str(package), skip_model_load=True))
    return sorted(set(weights + tables))


def quant_record(spec: QuantSpec, done: dict[str, Any]) -> dict[str, Any]:
    eight = {"eight_bit_weights": done["eight_bit"], "fp16_weights": done["fp16_weights"]}
    if spec.method == "fp16":
        return {"method": "fp16", "weights": "float16", "activations": "float16 (fp16 compute)", "io": "float32",
                **eight}
    if spec.method == "int8":
        return {"method": "int8", "weights": "int8 linear symmetric, per output channel "
                                             "(constexpr_blockwise_shift_scale)",
                "activations": "float16", "embedding_bits": 8, **eight}
    if spec.method == "int4":
        rounding = "GPTQ-calibrated (pocketvlm)" if spec.gptq else "min-max scales, round to nearest (coremltools)"
        return {"method": "int4", "weights": f"int4 linear symmetric, per block of {spec.block_size} input channels, "
                                             f"{rounding} (constexpr_blockwise_shift_scale, iOS 18)",
                "activations": "float16", "block_size": spec.block_size, "embedding_bits": 8, "gptq": spec.gptq,
                "first_layer_bits": spec.first_layer_bits, "last_layer_bits": spec.last_layer_bits, **eight}
    return {"method": "palette4", "weights": f"4-bit k-means palettes, one per {PALETTE_GROUP} output channels "
                                             "(constexpr_lut_to_dense, iOS 18)",
            "activations": "float16", "embedding_bits": 8, "first_layer_bits": spec.first_layer_bits,
            "last_layer_bits": spec.last_layer_bits, **eight}


def package_digest(package: Path) -> tuple[str, int]:
    """One sha256 and byte count for a package directory (over its files' relative paths and contents)."""
    from pocketvlm.runtime.manifest import sha256_file

    digest, total = hashlib.sha256(), 0
    for path in sorted(p for p in package.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(package).as_posix()}\0{sha256_file(path)}\n".encode())
        total += path.stat().st_size
    return digest.hexdigest(), total


def _convert_in_child(job: Path) -> int:
    """Child-process entry: convert the component described by ``job`` (JSON beside an .npz of feeds)."""
    import json

    import torch

    from pocketvlm.export.hf_quiet import quiet_transformers
    from pocketvlm.export.registry import get_family
    from pocketvlm.runtime.errors import PocketVLMError

    spec = json.loads(job.read_text(encoding="utf-8"))
    try:
        if spec.get("compress"):
            from pocketvlm.export.targets.coreml.decoder import without_broken_state_pass

            task = spec["compress"]
            with without_broken_state_pass():
                done = compress_package(Path(task["source"]), Path(task["target"]), QuantSpec(**task["spec"]))
            job.with_suffix(".done").write_text(json.dumps(done), encoding="utf-8")
            return 0
        family = get_family(spec["family"])
        with quiet_transformers():
            model = family.load_model(Path(spec["checkpoint"]))
        comp = next(c for c in family.export_components() if c.name == spec["component"])
        if spec.get("decoder"):
            from pocketvlm.export.targets.coreml.decoder import convert_decoder

            convert_decoder(model, comp, Path(spec["path"]), spec["decoder"]["prefill_length"],
                            spec["decoder"]["capacity"], spec["deployment_target"])
            return 0
        with np.load(job.with_suffix(".npz")) as data:
            feeds = {k: torch.from_numpy(data[k]) for k in data.files}
        convert_component(model, comp, Path(spec["path"]), feeds, spec["deployment_target"])
    except PocketVLMError as exc:
        job.with_suffix(".error").write_text(json.dumps({"problem": exc.problem, "fix": exc.fix}), encoding="utf-8")
        return 2
    return 0


def compress_isolated(source: Path, target: Path, spec: QuantSpec) -> dict[str, Any]:
    """``compress_package`` in a fresh process: coremltools holds the whole program and its quantized copies while
    it compresses, and a long-lived parent would keep that memory after each component."""
    from dataclasses import asdict

    return _run_child({"compress": {"source": str(source), "target": str(target), "spec": asdict(spec)}}, {},
                      target.name)


def convert_isolated(checkpoint_dir: Path, family_name: str, component: str, path: Path,
                     feeds: dict[str, Any], deployment_target: str = DEFAULT_TARGET,
                     decoder: dict[str, int] | None = None) -> None:
    """``convert_component`` (or, with ``decoder`` = {prefill_length, capacity}, ``coreml_decoder.convert_decoder``
    into the directory ``path``) in a fresh Python process that loads the checkpoint itself, so the parent holds no
    torch weights while coremltools converts (errors come back as the same typed errors)."""
    _run_child({"checkpoint": str(checkpoint_dir), "family": family_name, "component": component, "path": str(path),
                "deployment_target": deployment_target, "decoder": decoder}, feeds, component)


def _run_child(job_spec: dict[str, Any], feeds: dict[str, Any], what: str) -> dict[str, Any]:
    """Run one conversion or compression job in ``python -m pocketvlm.export.targets.coreml.convert``; typed errors
    come back as raised, a crash (e.g. the kernel's OOM killer) as an ExportError naming the job."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pocketvlm-coreml-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps(job_spec), encoding="utf-8")
        np.savez(job.with_suffix(".npz"), **{k: v.numpy() if hasattr(v, "numpy") else np.asarray(v)
                                             for k, v in feeds.items()})
        result = subprocess.run([sys.executable, "-m", "pocketvlm.export.targets.coreml.convert", str(job)],
                                capture_output=True, text=True)
        if job.with_suffix(".error").is_file():
            error = json.loads(job.with_suffix(".error").read_text(encoding="utf-8"))
            raise ExportError(error["problem"], error["fix"])
        if result.returncode != 0:
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            raise ExportError(f"the Core ML process for {what} died (exit {result.returncode}): "
                              f"{lines[-1][:300] if lines else 'no message'}",
                              "check free memory; re-run with --progress to see which component")
        done = job.with_suffix(".done")
        return json.loads(done.read_text(encoding="utf-8")) if done.is_file() else {}


def component_record(component: ComponentDef, config: Any, path: Path, spec: QuantSpec, done: dict[str, Any],
                     feeds: dict[str, Any], deployment_target: str) -> dict[str, Any]:

    inputs, outputs = component.signature(config)
    digest, size = package_digest(path)
    dtypes = {t.name: "int32" if str(feeds[t.name].dtype) in ("torch.int64", "torch.int32") else "float32"
              for t in inputs}
    static = {"signatures": {component.name: {k: list(v.shape) for k, v in feeds.items()}}, "dtypes": dtypes,
              "loop_inputs": [t.name for t in inputs if t.shape and t.shape[0] in LOOP_DIMS
                              and feeds[t.name].shape[0] == 1]}
    return {"file": path.name, "sha256": digest, "bytes": size, "format": "mlpackage",
            "inputs": [t.to_json() for t in inputs], "outputs": [t.to_json() for t in outputs],
            "quantization": quant_record(spec, done), "static": static,
            "coreml": {"deployment_target": deployment_target, "compute_precision": "float16",
                       "program": "mlprogram"}}


if __name__ == "__main__":
    import sys

    sys.exit(_convert_in_child(Path(sys.argv[1])))
