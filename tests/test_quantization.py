"""Quantization pieces: the typed config, the 4-bit block quantizer and the export-friendly rewrites."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketvlm.export.quant.blockwise import dequantize_blocks, quantize_blocks, quantize_blocks_asymmetric
from pocketvlm.export.quant.config import QuantConfig, QuantSpec
from pocketvlm.export.rewrites import PatchEmbeddingAsMatMul, swapped
from pocketvlm.export.targets.onnx.nbits import matmuls_to_nbits
from pocketvlm.runtime.errors import QuantizationError, UnsupportedModelError


def test_parse_per_component_config(tmp_path):
    config = QuantConfig.parse("int4,text_encoder=int8")
    assert config.for_component("image_encoder").method == "int4"
    assert config.for_component("text_encoder").method == "int8"
    path = tmp_path / "q.json"
    path.write_text(__import__("json").dumps(config.to_json()))
    assert QuantConfig.parse(str(path)) == config
    with pytest.raises(QuantizationError):
        QuantSpec(method="int4", block_size=24)
    with pytest.raises(QuantizationError, match="int4 only"):
        QuantSpec(method="int8", gptq=True)
    gptq = QuantConfig(QuantSpec(method="int4"), {"text_decoder": QuantSpec(method="int4", symmetric=False, gptq=True)})
    path.write_text(__import__("json").dumps(gptq.to_json()))
    assert QuantConfig.parse(str(path)).for_component("text_decoder").gptq


@pytest.mark.parametrize("bits", [4, 8])
def test_block_quantizer_round_trip_and_beats_absmax(bits):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((200, 64)).astype(np.float32)  # K not a multiple of the block: padded
    packed, scales = quantize_blocks(weight, 32, bits)
    restored = dequantize_blocks(packed, scales, 200, bits)
    assert restored.shape == weight.shape
    levels = 2 ** (bits - 1)
    blocks = np.zeros((224, 64), np.float32)
    blocks[:200] = weight
    blocks = blocks.T.reshape(64, 7, 32)
    absmax = np.abs(blocks).max(-1, keepdims=True) / levels
    rtn = (np.clip(np.rint(blocks / absmax), -levels, levels - 1) * absmax).reshape(64, -1)[:, :200].T
    assert ((restored - weight) ** 2).mean() <= ((rtn - weight) ** 2).mean()
    assert np.abs(restored - weight).max() <= np.abs(weight).max() / (levels - 1)


@pytest.mark.parametrize("bits", [4, 8])
def test_asymmetric_blocks_run_in_ort_and_beat_symmetric_off_centre(bits):
    """Zero points packed the way MatMulNBits reads them (K = 3 blocks + a partial one: odd block count per row);
    ORT's output equals x @ the numpy dequantization, and off-centre blocks lose less than the symmetric grid."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((112, 24)) * 0.02 + rng.uniform(0, 0.05, (1, 24))).astype(np.float32)
    packed, scales, zero = quantize_blocks_asymmetric(weight, 32, bits)
    restored = dequantize_blocks(packed, scales, 112, bits, zero=zero)
    sym = dequantize_blocks(*quantize_blocks(weight, 32, bits), 112, bits)
    assert ((restored - weight) ** 2).mean() < ((sym - weight) ** 2).mean()
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 24])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
    assert matmuls_to_nbits(model, block_size=32, bits=bits, symmetric=False) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits"] and len(model.graph.node[0].input) == 4
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 112)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ restored, rtol=1e-4, atol=1e-5)


def test_patch_embedding_as_matmul_is_exact():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8)
    pixels = torch.randn(2, 3, 32, 48)
    assert torch.allclose(PatchEmbeddingAsMatMul(conv)(pixels), conv(pixels), atol=1e-5)
    with pytest.raises(UnsupportedModelError):
        PatchEmbeddingAsMatMul(torch.nn.Conv2d(3, 16, kernel_size=8, stride=4))


def test_swapped_restores_on_error():
    parent = torch.nn.Sequential(torch.nn.Identity())
    original = parent[0]
    with pytest.raises(RuntimeError), swapped(parent, "0", torch.nn.ReLU()):
        assert isinstance(parent[0], torch.nn.ReLU)
        raise RuntimeError
    assert parent[0] is original


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_lowers_output_error_and_runs_in_ort(symmetric):
    """On correlated calibration inputs, GPTQ's layer output error is well below round-to-nearest's at the same
    grid, and the graph it writes computes x @ its dequantized weights in ORT."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from pocketvlm.export.quant.gptq import gptq_quantize
    from pocketvlm.export.targets.onnx.calibrate import collect_hessians

    rng = np.random.default_rng(2)
    mixing = rng.standard_normal((96, 96)).astype(np.float32) * rng.uniform(0.05, 2.0, 96).astype(np.float32)
    x = rng.standard_normal((512, 96)).astype(np.float32) @ mixing  # correlated, uneven channels
    weight = rng.standard_normal((96, 40)).astype(np.float32) * 0.05
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="layer")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 40])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
    hessians = collect_hessians(model, list(model.graph.node), [{"x": x[:256]}, {"x": x[256:]}])
    np.testing.assert_allclose(hessians["layer"], x.astype(np.float64).T @ x, rtol=1e-4)
    packed, scales, zero = gptq_quantize(weight, hessians["layer"], 32, 4, symmetric)
    assert (zero is None) == symmetric
    gptq = dequantize_blocks(packed, scales, 96, 4, zero=zero)
    rtn = (dequantize_blocks(*quantize_blocks(weight, 32, 4), 96, 4) if symmetric
           else (lambda p, s, z: dequantize_blocks(p, s, 96, 4, zero=z))(*quantize_blocks_asymmetric(weight, 32)))
    gptq_err, rtn_err = (np.linalg.norm(x @ (w - weight)) for w in (gptq, rtn))
    assert gptq_err < 0.8 * rtn_err, (gptq_err, rtn_err)
    assert matmuls_to_nbits(model, block_size=32, bits=4, symmetric=symmetric, hessians=hessians) == 1
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x[:4]})[0], x[:4] @ gptq, rtol=1e-3, atol=1e-3)


def test_column_chunks_give_the_same_quantization(monkeypatch):
    """Large weights are quantized a slice of output columns at a time (bounded temporaries): exactly the same
    result as one piece, for both grids."""
    import pocketvlm.export.quant.blockwise as int4

    weight = np.random.default_rng(3).standard_normal((96, 70)).astype(np.float32)
    whole = (int4.quantize_blocks(weight, 32), int4.quantize_blocks_asymmetric(weight, 32))
    monkeypatch.setattr(int4, "CHUNK_ELEMENTS", 96 * 8)  # 8 columns per slice, the last one shorter
    chunked = (int4.quantize_blocks(weight, 32), int4.quantize_blocks_asymmetric(weight, 32))
    for one, other in zip(whole, chunked, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(one, other, strict=True))


def test_streamed_quantization_equals_in_memory(tmp_path):
    """A graph whose weights are external data (as every fp32 export is) is quantized reading one weight at a time
    from disk: same bundle content as quantizing the graph held in memory, and the graph runs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from pocketvlm.export.targets.onnx.nbits import tensor_array
    from pocketvlm.export.targets.onnx.quantize import quantize_file

    rng = np.random.default_rng(4)
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in ((64, 96), (96, 32), (32, 64))]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}" if i < 2 else "y"])
             for i in range(3)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 18)])
    inline, external = tmp_path / "inline" / "m.onnx", tmp_path / "external" / "m.onnx"
    for path in (inline, external):
        path.parent.mkdir()
    onnx.save(model, str(inline))
    onnx.save(model, str(external), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    lazy = onnx.load(str(external), load_external_data=False)
    assert all(np.array_equal(tensor_array(init, external.parent), w)
               for init, w in zip(lazy.graph.initializer, weights, strict=True))
    spec = QuantSpec(method="int4")
    quantize_file(inline, tmp_path / "a.onnx", spec)
    quantize_file(external, tmp_path / "b.onnx", spec)
    a, b = onnx.load(str(tmp_path / "a.onnx")), onnx.load(str(tmp_path / "b.onnx"))
    assert [(i.name, i.raw_data) for i in a.graph.initializer] == [(i.name, i.raw_data) for i in b.graph.initializer]
    assert sum(n.op_type == "MatMulNBits" for n in b.graph.node) == 3
    x = rng.standard_normal((1, 64)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = x @ weights[0] @ weights[1] @ weights[2]
    assert float(np.dot(got.ravel(), want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want)) > 0.99
