"""Static QDQ quantization for the HTP: ``a16w8`` (uint16 activations, uint8 weights) and ``a8w8`` (uint8 both),
with ONNX Runtime's QNN quantization helpers (``qnn_preprocess_model`` fuses what the HTP has single ops for;
``get_qnn_qdq_config`` picks the per-op overrides the HTP needs), calibrated MinMax on recorded feeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.hf_quiet import quiet_tool
from pocketvlm.runtime.errors import QuantizationError

ACTIVATIONS = {"a16w8": "QUInt16", "a8w8": "QUInt8"}


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], names: list[str]) -> None:
        self._rows = iter([{k: np.asarray(f[k]) for k in names} for f in feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._rows, None)


def quantize_qdq(source: Path, dest: Path, method: str, feeds: list[dict[str, np.ndarray]]) -> None:
    import onnx

    if not feeds:
        raise QuantizationError(f"{method} needs calibration feeds for {source.stem}",
                                "pass --calibration-images DIR (32 or more representative images)")
    names = [i.name for i in onnx.load(str(source), load_external_data=False).graph.input]
    prepared = dest.with_name(dest.stem + ".prep.onnx")
    try:
        with quiet_tool(None, stderr=False):  # the quantizer's "consider pre-processing" lines on the root logger
            _quantize(source, prepared, dest, method, _Reader(feeds, names))
    except QuantizationError:
        raise
    except Exception as exc:  # the quantizer raises ValueError / onnx errors / ORT errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantizationError(f"{method} QDQ quantization of {source.stem} failed: {first[:300]}",
                                "try fp16 for this component") from exc
    finally:
        prepared.unlink(missing_ok=True)
        prepared.with_suffix(".onnx.data").unlink(missing_ok=True)


def _quantize(source: Path, prepared: Path, dest: Path, method: str, reader: _Reader) -> None:
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    model_in = prepared if qnn_preprocess_model(str(source), str(prepared), fuse_layernorm=True) else source
    config = get_qnn_qdq_config(str(model_in), reader, activation_type=getattr(QuantType, ACTIVATIONS[method]),
                                weight_type=QuantType.QUInt8, nodes_to_exclude=masked_softmax_nodes(model_in))
    quantize(str(model_in), str(dest), config)


def masked_softmax_nodes(path: Path) -> list[str]:
    """Every Softmax and the Add that feeds it (attention scores plus a mask): stay in float (fp16 on the HTP).
    The mask holds the dtype's minimum (-3.4e38), so a per-tensor grid over scores + mask has a step of ~1e33 and
    every real score rounds to the same level: measured on the shapes CLIP text tower, QDQ text embeddings cosine
    0.68 against fp32, and the HTP disagreed with the QDQ graph on CPU (cosine 0.74)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {out: node for node in graph.node for out in node.output}
    names = []
    for node in graph.node:
        if node.op_type == "Softmax":
            names.append(node.name)
            feeder = producers.get(node.input[0])
            if feeder is not None and feeder.op_type == "Add":
                names.append(feeder.name)
    return names


def record(method: str, calibration: int) -> dict[str, Any]:
    if method in ("fp16", "fp32"):
        return {"method": "fp16", "weights": "float16 (HTP)", "activations": "float16 (HTP)", "io": "float32"}
    bits = 16 if method == "a16w8" else 8
    return {"method": method, "weights": "uint8 per-tensor asymmetric (QDQ)",
            "activations": f"uint{bits} per-tensor asymmetric (QDQ, MinMax)", "calibration_feeds": calibration,
            "io": "float32"}
