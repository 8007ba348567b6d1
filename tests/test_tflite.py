"""--target tflite: every family exported with litert-torch, run with ai-edge-litert, compared with PyTorch.

export -> (quantize with ai-edge-quantizer) -> load -> run through the runtime's LiteRT session -> compare.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pocketvlm.export.loop import export_bundle
from pocketvlm.export.quant.config import QuantConfig
from pocketvlm.export.registry import get_family
from pocketvlm.export.static_shapes import StaticShapes
from pocketvlm.export.verify.parity import dual_encoder_parity
from pocketvlm.export.verify.vlm_parity import vlm_parity
from pocketvlm.runtime import errors
from pocketvlm.runtime.manifest import load_bundle
from pocketvlm.runtime.vlm import VisionLanguageModel
from tests.app_checks import assert_app_block_matches_runtime
from tests.cases import DUAL_ENCODERS, VLM_FAMILIES
from tests.test_vlm import assert_chunked_greedy_equal, assert_passes, two_sizes

# small static shapes: prompts of ~30-140 tokens run as several 16-token prefill chunks; the image side is a multiple
# of each family's patch x merge (28 for Qwen2/2.5-VL, 32 for Qwen3-VL)
SHAPES = {"qwen3_vl": StaticShapes(prefill_length=16, kv_capacity=256, image_size=128)}
DEFAULT_SHAPES = StaticShapes(prefill_length=16, kv_capacity=256, image_size=112)


def tflite_bundle(workspace, family: str, quant: str = "fp32", size: str = "tiny"):
    return workspace.bundle(family, quant, size, target="tflite", shapes=SHAPES.get(family, DEFAULT_SHAPES))


@pytest.mark.parity("tflite")
@pytest.mark.parametrize("family", DUAL_ENCODERS)
def test_dual_encoder_fp32_matches_pytorch(workspace, photos, family):
    bundle_dir = tflite_bundle(workspace, family)
    bundle = load_bundle(bundle_dir)
    assert {spec.format for spec in bundle.components.values()} == {"tflite"}
    assert bundle.manifest["tokenizer"]["padding"] == "max_length"  # static text length
    subset = {k: photos[k] for k in ("astronaut", "coffee", "camera", "logo")}  # 4 images: the batch-1 loop
    report = dual_encoder_parity(bundle_dir, workspace.checkpoint(family), photos=subset)
    for name, row in report["components"].items():
        assert row["max_abs"] <= get_family(family).tolerances.limit("max_abs", "fp32", "tflite", name), (name, row)
    assert report["zero_shot"]["top1_agreement"] == 1.0
    assert_passes(report)


@pytest.mark.parity("tflite")
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vlm_fp32_greedy_equals_pytorch_through_prefill_and_decode(workspace, photos, family):
    bundle_dir = tflite_bundle(workspace, family, "fp32", "varied")
    static = load_bundle(bundle_dir).manifest["components"]["text_decoder"]["static"]
    assert set(static["signatures"]) == {"prefill_16", "decode"}
    report = vlm_parity(bundle_dir, workspace.checkpoint(family, "varied"), photos=two_sizes(photos), steps=16)
    assert_chunked_greedy_equal(report)
    # the phone's prompt: ids around the user's text and positions resolved by the exporter (the Qwen grid is fixed;
    # the tiny Idefics3 splits images, so its layout depends on the image and it gets no app block)
    if family == "idefics3":
        assert "app" not in load_bundle(bundle_dir).manifest
    else:
        assert_app_block_matches_runtime(bundle_dir, photos)


@pytest.mark.parametrize(("family", "quant"), [("qwen2_vl", "int8"), ("qwen2_vl", "int4"), ("idefics3", "int4")])
def test_quantized_vlm_teacher_forced_logits(workspace, photos, family, quant):
    bundle_dir = tflite_bundle(workspace, family, quant, "standard")
    record = load_bundle(bundle_dir).manifest["components"]["text_decoder"]["quantization"]
    assert record["method"] == quant
    report = vlm_parity(bundle_dir, workspace.checkpoint(family, "standard"), photos=two_sizes(photos), steps=16)
    min_cosine = get_family(family).tolerances.limit("logits_min_cosine", quant, "tflite")
    for row in report["photos"]:
        assert min(row["logits"]["per_step_cosine"]) >= min_cosine, row["logits"]
    assert_passes(report)
    fp32 = load_bundle(tflite_bundle(workspace, family, "fp32", "standard")).components["text_decoder"].bytes
    assert load_bundle(bundle_dir).components["text_decoder"].bytes < fp32  # tiny graphs: mostly not weights


@pytest.mark.parametrize("quant", ["fp16", "int8", "int4"])
def test_quantized_clip_embeddings(workspace, photos, quant):
    bundle_dir = tflite_bundle(workspace, "clip", quant, "medium")
    subset = {k: photos[k] for k in ("astronaut", "coffee", "camera")}
    report = dual_encoder_parity(bundle_dir, workspace.checkpoint("clip", "medium"), photos=subset)
    # int4 here is min-max block-wise weights with int8 dynamic activations (what ai-edge-quantizer offers): on the
    # medium random CLIP text tower it measured cosine 0.964, below ONNX int4's >= 0.98 (MSE scales, float
    # activations), hence the registry's tflite/int4 limit; task accuracy on trained weights is the real check
    # (benchmarks/shapes_eval.py --target tflite)
    for name, row in report["components"].items():
        floor = get_family("clip").tolerances.limit("min_cosine", quant, "tflite", name)
        assert row["cosine_min"] >= floor, (quant, name, row)
    assert_passes(report)


def test_prompt_beyond_the_kv_capacity_is_refused(workspace, photos):
    model = VisionLanguageModel.load(tflite_bundle(workspace, "qwen2_vl", "fp32", "varied"))
    from pocketvlm.runtime.generation import GenerationConfig

    with pytest.raises(errors.InputError, match="KV capacity of 256"):
        model.generate(photos["coffee"], "describe " * 120, GenerationConfig(max_new_tokens=4))


def test_unsupported_tflite_requests_name_the_setting(workspace, tmp_path):
    checkpoint = workspace.checkpoint("qwen2_vl")
    with pytest.raises(errors.ExportError, match="image_size 100 is not a multiple of 28"):
        export_bundle(checkpoint, tmp_path / "out", target="tflite", shapes=StaticShapes(image_size=100))
    zero_points = tmp_path / "zero_points.json"
    zero_points.write_text(json.dumps({"default": {"method": "int4", "symmetric": False}}))
    with pytest.raises(errors.QuantizationError, match="'symmetric' is not available for --target tflite"):
        export_bundle(checkpoint, tmp_path / "out", target="tflite", quant=QuantConfig.parse(str(zero_points)))
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps({"default": {"method": "int4", "block_size": 16}}))
    with pytest.raises(errors.QuantizationError, match="block_size 16 is not offered by --target tflite"):
        export_bundle(checkpoint, tmp_path / "out", target="tflite", quant=QuantConfig.parse(str(blocks)))
    with pytest.raises(errors.ExportError, match="kv_capacity 8 is smaller than prefill_length 16"):
        StaticShapes(prefill_length=16, kv_capacity=8)
    assert not (tmp_path / "out").exists()


def test_int4_recipe_keeps_the_first_and_last_weight_layers_at_8_bits(workspace):
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as flatbuffer

    from pocketvlm.export.quant.config import QuantSpec
    from pocketvlm.export.targets.base import check_capabilities
    from pocketvlm.export.targets.registry import TARGETS
    from pocketvlm.export.targets.tflite.quantize import tflite_recipe

    bundle_dir = tflite_bundle(workspace, "idefics3", "int4", "standard")
    record = load_bundle(bundle_dir).manifest["components"]["text_decoder"]["quantization"]
    assert record["first_layer_bits"] == record["last_layer_bits"] == 8
    assert "reading the input of the first and of the last one" in record["weights"]
    model = flatbuffer.read_model(str(bundle_dir / "text_decoder.tflite"))
    for graph in model.subgraphs:  # prefill and decode: same weights, same widths
        widths = [flatbuffer.TENSOR_CODE_TO_TYPE[graph.tensors[op.inputs[1]].type] for op in graph.operators
                  if flatbuffer.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
                  == "FULLY_CONNECTED"]
        # layer 0's q, k, v projections (one input), ..., layer N-1's down projection, then the LM head
        assert widths[:3] == ["INT8"] * 3 and widths[-2:] == ["INT8"] * 2, (graph.name, widths)
        assert set(widths[3:-2]) == {"INT4"}, (graph.name, widths)
    # 4 asks for the layer in int4 like the rest: only the other edge gets an int8 entry in the recipe
    check_capabilities(TARGETS["tflite"], QuantSpec(method="int4", first_layer_bits=4), "text_decoder", ["tflite"])
    regexes = [entry["regex"] for entry in tflite_recipe(QuantSpec(method="int4", first_layer_bits=4),
                                                         edges=("FIRST", "LAST"))]
    assert "LAST" in regexes and "FIRST" not in regexes


def test_cli_tflite_export_and_bad_shapes_file(workspace, tmp_path, capsys):
    from pocketvlm.cli.main import main

    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps({"prefill_len": 16}))
    code = main(["export", "--model", str(workspace.checkpoint("clip")), "--out", str(tmp_path / "b"),
                 "--target", "tflite", "--shapes", str(shapes)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prefill_len" in err[0]
    assert not (tmp_path / "b").exists()


def test_batch_loop_equals_one_by_one(workspace, photos):
    from pocketvlm.runtime import DualEncoder

    model = DualEncoder.load(tflite_bundle(workspace, "clip"))
    images = [photos["astronaut"], photos["coffee"], photos["camera"]]
    together = model.embed_image(images)
    alone = np.concatenate([model.embed_image([image]) for image in images])
    assert np.array_equal(together, alone)


def test_delegate_coverage_rules():
    from pocketvlm.export.targets.tflite.delegates import Node, Tensor, coverage, gpu_reason, nnapi_reason

    act, weight = Tensor("FLOAT32", 2, False, False, False), Tensor("FLOAT32", 2, True, False, False)
    int4 = Tensor("INT4", 2, True, True, False)
    assert gpu_reason(Node("FULLY_CONNECTED", 1, (act, weight), (act,))) is None
    assert "int4" in gpu_reason(Node("FULLY_CONNECTED", 1, (act, int4), (act,)))
    assert gpu_reason(Node("EMBEDDING_LOOKUP", 1, (act, weight), (act,))) == "no GPU kernel for this op"
    assert "rank > 4" in gpu_reason(Node("RESHAPE", 1, (Tensor("FLOAT32", 5, False, False, False),), (act,)))
    assert "int32 activation" in gpu_reason(Node("ADD", 1, (Tensor("INT32", 2, False, False, False),), (act,)))
    assert nnapi_reason(Node("GELU", 1, (act,), (act,))) == "not handled by the NNAPI delegate"
    assert "op version 6" in nnapi_reason(Node("TRANSPOSE", 6, (act,), (act,)))
    report = coverage([Node("ADD", 1, (act, act), (act,)), Node("GELU", 1, (act,), (act,))])
    assert report["gpu"]["share"] == 1.0 and report["nnapi"]["share"] == 0.5
    assert report["nnapi"]["fallback"] == [{"op": "GELU", "nodes": 1, "reason": "not handled by the NNAPI delegate"}]
    # an accepted op touching an int64 tensor: NNAPI cannot hold it, so the whole graph stays on CPU
    wide = coverage([Node("ADD", 1, (Tensor("INT64", 2, False, False, False),), (act,))])
    assert wide["nnapi"]["delegated"] == 0 and wide["nnapi"]["whole_graph_fallback"]


def test_parity_report_carries_delegate_coverage(workspace, photos, capsys):
    from pocketvlm.cli.main import main

    bundle = tflite_bundle(workspace, "qwen2_vl", "fp32", "varied")
    report = vlm_parity(bundle, workspace.checkpoint("qwen2_vl", "varied"),
                        photos={"coffee": photos["coffee"]}, steps=4)
    decode = report["delegates"]["text_decoder"]["decode"]
    for delegate in ("gpu", "nnapi"):
        assert decode[delegate]["nodes"] > 50 and 0.5 < decode[delegate]["share"] < 1.0
        assert decode[delegate]["fallback"], "the tiny decoder has ops that fall back (index math)"
    assert main(["parity", "--bundle", str(bundle), "--model", str(workspace.checkpoint("qwen2_vl", "varied")),
                 "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "text_decoder/decode GPU:" in out and "falls back:" in out


def test_gptq_int4_from_feeds_recorded_through_the_fp32_bundle(workspace, photos, tmp_path):
    from pocketvlm.export.loop import export_bundles
    from pocketvlm.export.quant.calibration import SignatureFeedRecorder
    from pocketvlm.export.quant.config import QuantSpec
    from pocketvlm.runtime.generation import GenerationConfig

    checkpoint = workspace.checkpoint("qwen2_vl", "standard")
    model = VisionLanguageModel.load(tflite_bundle(workspace, "qwen2_vl", "fp32", "standard"))
    recorders = {name: SignatureFeedRecorder(session) for name, session in model.sessions.items()}
    model.sessions.update(recorders)
    for image in two_sizes(photos).values():
        model.generate(image, "Describe this image.", GenerationConfig(max_new_tokens=8))
    feeds = {name: recorder.feeds for name, recorder in recorders.items()}
    assert set(feeds["text_decoder"]) == {"prefill_16", "decode"}
    assert len(feeds["text_decoder"]["prefill_16"]) >= 4 and feeds["text_decoder"]["decode"]
    quant = QuantConfig(QuantSpec(method="int4", gptq=True))
    with pytest.raises(errors.QuantizationError, match="no calibration feeds"):
        export_bundles(checkpoint, [(tmp_path / "none", quant)], target="tflite", shapes=DEFAULT_SHAPES)
    (bundle,) = export_bundles(checkpoint, [(tmp_path / "gptq", quant)], target="tflite", shapes=DEFAULT_SHAPES,
                               calibration=feeds)
    assert load_bundle(bundle).manifest["components"]["text_decoder"]["quantization"]["gptq"] is True
    report = vlm_parity(bundle, checkpoint, photos=two_sizes(photos), steps=16)
    min_cosine = get_family("qwen2_vl").tolerances.limit("logits_min_cosine", "int4", "tflite")
    for row in report["photos"]:
        assert min(row["logits"]["per_step_cosine"]) >= min_cosine, row["logits"]
