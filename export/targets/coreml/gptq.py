"""GPTQ for Core ML int4: pocketvlm's GPTQ (``export/gptq.py``, the one the ONNX target uses) written into the
block-wise int4 weights coremltools produced.

coremltools rounds each block to nearest with min-max scales; on the shapes captioner's real SmolLM2 decoder that
breaks captions (as round-to-nearest int4 does on ONNX and LiteRT). Here:

1. the input Hessian ``X^T X`` of every ``nn.Linear`` of the component's export wrapper is collected with forward
   hooks while the wrapper runs the calibration feeds (the same feeds the ONNX target calibrates on: recorded
   through an fp32 bundle with ``gptq.FeedRecorder``);
2. coremltools compresses the package as usual (``int4`` per block of ``block_size``; first and last layers and
   tables at 8 bits);
3. for every ``constexpr_blockwise_shift_scale`` with int4 data, the weight it came from is found by name, GPTQ
   quantizes it on the same block grid, and its codes and scales are written over coremltools' in ``weight.bin``
   (same shapes, same offsets: the program is unchanged, only the numbers are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.quant.gptq import gptq_quantize
from pocketvlm.export.targets.coreml.mil_eval import BLOB_SENTINEL, read_spec
from pocketvlm.runtime.errors import QuantizationError


def _export_name(prefix: str, path: str) -> str:
    """A Linear weight's name as torch.export and then coremltools name its constant: 'p_' + dotted path, '_'."""
    return "p_" + f"{prefix}{path}.weight".replace(".", "_")


def linear_hessians(module: Any, feeds: list[dict[str, np.ndarray]], names: list[str],
                    prefix: str = "inner.") -> dict[str, np.ndarray]:
    """``{export name of each Linear weight: X^T X}`` over every row of every feed; ``names`` are the wrapper's
    positional inputs in order, ``prefix`` the wrapper's path inside the exported module."""
    import torch

    sums: dict[str, np.ndarray] = {}
    hooks = []
    for path, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear):
            key = _export_name(prefix, path)

            def hook(_: Any, inputs: tuple[torch.Tensor, ...], __: Any, key: str = key) -> None:
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
                product = (x.T @ x).numpy()
                sums[key] = sums[key] + product if key in sums else product

            hooks.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for feed in feeds:
                module(*[torch.from_numpy(np.asarray(feed[name])) for name in names])
    finally:
        for handle in hooks:
            handle.remove()
    if not sums:
        raise QuantizationError("GPTQ found no Linear layers in the component", "drop gptq for this component")
    return sums


def _blob_region(blob: np.ndarray, offset: int) -> tuple[int, int]:
    meta = np.frombuffer(blob[offset : offset + 24].tobytes(), np.uint32)
    if int(meta[0]) != BLOB_SENTINEL:
        raise QuantizationError(f"no weight blob at offset {offset}", "re-export the package")
    size, start = (int(v) for v in np.frombuffer(blob[offset + 8 : offset + 24].tobytes(), np.uint64))
    return start, size


def pack_int4(values: np.ndarray) -> bytes:
    """Signed int4 values as Core ML's blob storage packs them (element i at bits 4i..4i+3, little-endian)."""
    nibbles = (values.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.concatenate([nibbles, np.zeros(1, np.uint8)])
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()


def rewrite_int4(package: Path, weights: dict[str, np.ndarray], hessians: dict[str, np.ndarray],
                 block_size: int) -> list[str]:
    """Overwrite the int4 codes and scales of ``package`` (single-function, just compressed by coremltools) with
    GPTQ's, for every int4 weight whose source is in ``weights`` (name -> [out, in] float array) and
    ``hessians``. Returns the names rewritten."""
    spec = read_spec(package)
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    path = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    blob = np.memmap(path, dtype=np.uint8, mode="r+")
    done = []
    try:
        for operation in block.operations:
            if operation.type != "constexpr_blockwise_shift_scale":
                continue
            data = operation.inputs["data"].arguments[0].value
            scale = operation.inputs["scale"].arguments[0].value
            if data.type.tensorType.dataType != _int4_type():
                continue
            name = _source(operation.outputs[0].name, weights)
            if name is None or name not in hessians:
                continue
            weight = weights[name]
            out, k = weight.shape
            blocks = int(scale.type.tensorType.dimensions[1].constant.size)
            if blocks * block_size != k:
                raise QuantizationError(f"{name}: {blocks} scale blocks do not tile {k} inputs at block {block_size}",
                                        "use the block_size the package was compressed with")
            packed, scales, _ = gptq_quantize(weight.T.astype(np.float32), hessians[name], block_size, bits=4)
            levels = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(out, k).astype(np.int16) - 8
            start, size = _blob_region(blob, int(data.blobFileValue.offset))
            encoded = pack_int4(levels)
            if len(encoded) > size:
                raise QuantizationError(f"{name}: GPTQ codes do not fit coremltools' blob", "report this model")
            blob[start : start + len(encoded)] = np.frombuffer(encoded, np.uint8)
            start, size = _blob_region(blob, int(scale.blobFileValue.offset))
            encoded = scales.astype(np.float16).tobytes()
            blob[start : start + len(encoded)] = np.frombuffer(encoded, np.uint8)
            done.append(name)
        blob.flush()
    finally:
        del blob
    return done


def _int4_type() -> int:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Value("INT4")


def _source(output_name: str, weights: dict[str, Any]) -> str | None:
    """The weight a constexpr op decompresses, from its output name (coremltools keeps the const's name, e.g.
    ``p_inner_..._q_proj_weight_to_fp16_quantized``)."""
    matches = [name for name in weights if output_name.startswith(name + "_to_fp16") or output_name == name]
    return max(matches, key=len) if matches else None


def wrapper_weights(module: Any, prefix: str = "inner.") -> dict[str, np.ndarray]:
    """``{export name: [out, in] float32}`` of every Linear weight of the wrapper."""
    import torch

    return {_export_name(prefix, path): layer.weight.detach().float().numpy()
            for path, layer in module.named_modules() if isinstance(layer, torch.nn.Linear)}


def calibrate(model: Any, component: Any, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """What ``rewrite_int4`` needs for one component: its Linear weights and their Hessians on ``feeds``."""
    in_defs, _ = component.signature(model.config)
    module = component.wrap(model).eval()
    return {"weights": wrapper_weights(module),
            "hessians": linear_hessians(module, feeds, [t.name for t in in_defs])}
