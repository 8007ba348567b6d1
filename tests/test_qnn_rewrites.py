"""The QNN target's graph edits (export/targets/qnn/rewrite.py) compute exactly what the graphs they replace
compute, on ONNX Runtime's CPU provider, and remove the op patterns the HTP mishandles. No plugin needed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from pocketvlm.export.targets.qnn.rewrite import degenerate_clips, gathernd_to_gather, rmsnorm_over_rank3


def save(tmp_path, nodes, inputs, outputs, inits=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    return path


def run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_gathernd_constant_and_runtime_indices_become_gather(tmp_path):
    rng = np.random.default_rng(0)
    grid = numpy_helper.from_array(np.stack(np.meshgrid([0], np.arange(5), indexing="ij"), -1)
                                   .reshape(1, 5, 2).astype(np.int64), "grid")
    nodes = [helper.make_node("GatherND", ["mask", "grid"], ["picked"]),  # bool data, constant indices
             helper.make_node("GatherND", ["table", "rows"], ["gathered"])]  # float data, runtime indices
    path = save(tmp_path, nodes,
                [helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 5]),
                 helper.make_tensor_value_info("table", TensorProto.FLOAT, [6, 4, 3]),
                 helper.make_tensor_value_info("rows", TensorProto.INT64, [7, 2])],
                [helper.make_tensor_value_info("picked", TensorProto.BOOL, [1, 5]),
                 helper.make_tensor_value_info("gathered", TensorProto.FLOAT, [7, 3])], [grid])
    feeds = {"mask": rng.random((1, 5)) > 0.5, "table": rng.standard_normal((6, 4, 3)).astype(np.float32),
             "rows": np.stack([rng.integers(0, 6, 7), rng.integers(0, 4, 7)], -1).astype(np.int64)}
    before = run(path, feeds)
    assert gathernd_to_gather(path) == 2
    assert "GatherND" not in ops(path) and ops(path).count("Gather") == 2
    for want, got in zip(before, run(path, feeds), strict=True):
        assert want.dtype == got.dtype and np.array_equal(want, got)


def test_degenerate_clip_is_the_constant(tmp_path):
    bound = numpy_helper.from_array(np.array(0, np.int64), "zero")
    path = save(tmp_path, [helper.make_node("Clip", ["x", "zero", "zero"], ["y"])],
                [helper.make_tensor_value_info("x", TensorProto.INT64, [4])],
                [helper.make_tensor_value_info("y", TensorProto.INT64, [4])], [bound])
    feeds = {"x": np.array([-3, 0, 2, 9], np.int64)}
    before = run(path, feeds)
    assert degenerate_clips(path) == 1 and "Clip" not in ops(path)
    assert np.array_equal(before[0], run(path, feeds)[0]) and not run(path, feeds)[0].any()


def test_rank4_rmsnorm_runs_on_a_rank3_view(tmp_path):
    scale = numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(np.float32), "scale")
    norm = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y"], axis=-1, epsilon=1e-6)
    path = save(tmp_path, [norm], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 3, 8])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 3, 8])], [scale])
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 5, 3, 8)).astype(np.float32) * 4}
    before = run(path, feeds)
    assert rmsnorm_over_rank3(path) == 1
    assert ops(path) == ["Reshape", "SimplifiedLayerNormalization", "Reshape"]
    np.testing.assert_allclose(run(path, feeds)[0], before[0], rtol=1e-6, atol=1e-6)
    assert rmsnorm_over_rank3(path) == 0  # rank 3 already: left alone
