"""--target coreml: packages converted with coremltools, checked on Linux with pocketvlm's reference evaluator.

export -> (compress with coremltools.optimize) -> load -> run through the runtime's CoreMLSession (reference
evaluator as predictor) -> compare with PyTorch. Plus the evaluator's own pieces against independent references.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pocketvlm.export.loop import export_bundles
from pocketvlm.export.quant.config import QuantConfig
from pocketvlm.export.registry import families, get_family
from pocketvlm.export.static_shapes import StaticShapes
from pocketvlm.export.targets.coreml.check import EvaluatorPredictor, ane_risks
from pocketvlm.export.targets.coreml.mil_eval import BlobFile, CoreMLEvaluatorError, MILProgram
from pocketvlm.export.verify.parity import dual_encoder_parity
from pocketvlm.export.verify.vlm_parity import vlm_parity
from pocketvlm.runtime import errors
from pocketvlm.runtime.manifest import load_bundle
from tests.cases import DUAL_ENCODERS, VLM_FAMILIES
from tests.test_vlm import assert_passes

ct = pytest.importorskip("coremltools")

METHODS = ("fp16", "int8", "int4", "palette4")
# prompts of ~30-70 tokens run as several 16-token prefill chunks, then decode steps, over 256 cache slots
SHAPES = {"qwen3_vl": StaticShapes(prefill_length=16, kv_capacity=256, image_size=128)}
DEFAULT_SHAPES = StaticShapes(prefill_length=16, kv_capacity=256, image_size=112)


def coreml_bundles(workspace, family: str) -> dict[str, Path]:
    key = ("coreml", family)
    if key not in workspace._bundles:
        outs = [(workspace.root / f"coreml-{family}-{m}", QuantConfig.parse(m)) for m in METHODS]
        paths = export_bundles(workspace.checkpoint(family), outs, target="coreml", isolate=False)
        workspace._bundles[key] = dict(zip(METHODS, paths, strict=True))
    return workspace._bundles[key]


def coreml_vlm(workspace, family: str, quant: str = "fp16", isolate: bool = False,
               shapes: StaticShapes | None = None) -> Path:
    return workspace.bundle(family, quant, "fp16", target="coreml", isolate=isolate,
                            shapes=shapes or SHAPES.get(family, DEFAULT_SHAPES))


@pytest.mark.parity("coreml")
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_stateful_decoder_greedy_tokens_equal_pytorch(workspace, photos, family):
    """fp16 packages: vision side close to PyTorch, and prefill (16-token chunks) + 8 decode steps through the
    stateful decoder give PyTorch's greedy tokens."""
    bundle_dir = coreml_vlm(workspace, family)
    bundle = load_bundle(bundle_dir)
    decoder = bundle.manifest["components"]["text_decoder"]
    assert decoder["coreml"]["functions"] == ["prefill_16", "decode"]
    assert decoder["static"]["states"] == ["key_cache", "value_cache"]
    report = vlm_parity(bundle_dir, workspace.checkpoint(family, "fp16"),
                        photos={k: photos[k] for k in ("astronaut", "camera")}, steps=9)
    image_token = bundle.manifest["special_tokens"]["image_token_id"]
    for row in report["photos"]:
        # a random decoder may generate the image placeholder token, which every target's decoder graph fills with
        # an image row where HF embeds it as text: such rows are not a Core ML check (none with these seeds)
        assert image_token not in row["greedy"]["reference"], row["greedy"]
    # the registered fp16 limits: vision cosine and max abs over the output's scale; decoder and end-to-end logits
    # cosine; greedy tokens equal, or a first divergence from step 4 on a near-tie (the reference's top-2 margin
    # within 2x the fp16 logit error there)
    assert_passes(report)
    assert sum(row["greedy"]["equal"] for row in report["photos"]) >= 1
    assert report["neural_engine"]["text_decoder"]


def test_prompt_within_one_padded_chunk(workspace, photos):
    """A prompt shorter than prefill_N runs as one left-padded chunk with an empty cache: its padding rows see no key
    at all, which must not turn into NaN in fp16 (the mask is clamped to a finite floor, as float32 eager behaves)."""
    bundle_dir = coreml_vlm(workspace, "idefics3", shapes=StaticShapes(prefill_length=192, kv_capacity=256,
                                                                        image_size=112))
    report = vlm_parity(bundle_dir, workspace.checkpoint("idefics3", "fp16"), photos={"camera": photos["camera"]},
                        steps=9)
    (row,) = report["photos"]
    assert row["prompt_tokens"] < 192
    tolerances = get_family("idefics3").tolerances
    # NaN logits fail this (cosine NaN)
    assert row["logits"]["cosine_min"] >= tolerances.limit("logits_min_cosine", "fp16", "coreml"), row["logits"]
    # one near-tie step with this seed (margin < error): 8 of 9
    assert row["teacher_forced_top1_agreement"] >= tolerances.limit("min_top1_agreement", "fp16", "coreml"), row
    assert_passes(report)


def test_quantized_decoders_and_shared_weights(workspace, photos):
    """int8 / int4 / palette4 decoders on random weights: judged by logits cosine and top-1 agreement (greedy tokens
    of a random model flip on near-ties). Both functions share one copy of the weights."""
    import torch

    # sanity floors on a 2-layer random decoder (hidden 64), registered in vlm_common.TOLERANCES; measured here:
    # int8 0.998, int4 ~0.9, palette4 0.86 logits cosine. The trained shapes captioner gives the real quality figures
    # (benchmarks/shapes_eval.py)
    tolerances = get_family("idefics3").tolerances
    fp16 = load_bundle(coreml_vlm(workspace, "idefics3"))
    model = families()["idefics3"].load_model(workspace.checkpoint("idefics3", "fp16"))
    decoder_params = sum(p.numel() for n, p in model.named_parameters() if "vision" not in n and "connector" not in n)
    weights = fp16.file("text_decoder.mlpackage") / "Data/com.apple.CoreML/weights/weight.bin"
    assert weights.stat().st_size < 1.2 * 2 * decoder_params  # one fp16 copy for prefill and decode, not two
    del model, torch
    for method in ("int8", "int4", "palette4"):
        bundle_dir = coreml_vlm(workspace, "idefics3", method)
        report = vlm_parity(bundle_dir, workspace.checkpoint("idefics3", "fp16"),
                            photos={"astronaut": photos["astronaut"]}, steps=9)
        (row,) = report["photos"]
        cosine = tolerances.limit("logits_min_cosine", method, "coreml")
        top1 = tolerances.limit("min_top1_agreement", method, "coreml")
        assert row["logits"]["cosine_min"] >= cosine, (method, row["logits"])
        assert row["teacher_forced_top1_agreement"] >= top1, (method, row)
        assert_passes(report)
        assert load_bundle(bundle_dir).total_bytes < fp16.total_bytes


def test_isolated_decoder_conversion_and_kv_capacity(workspace, photos):
    """Each component converted in its own process (the CLI's default) writes the same weights and generates the same
    tokens as in-process conversion; a prompt past the KV capacity is a typed error naming the capacity."""
    from pocketvlm.export.targets.coreml.check import load_runner
    from pocketvlm.runtime.generation import GenerationConfig

    isolated_dir, reference_dir = coreml_vlm(workspace, "idefics3", isolate=True), coreml_vlm(workspace, "idefics3")
    for name in ("vision_encoder", "text_decoder"):
        weights = f"{name}.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
        assert (isolated_dir / weights).read_bytes() == (reference_dir / weights).read_bytes(), name
    isolated, reference = load_runner(isolated_dir), load_runner(reference_dir)
    config = GenerationConfig(max_new_tokens=6)
    assert isolated.generate(photos["camera"], config=config).token_ids == \
        reference.generate(photos["camera"], config=config).token_ids
    with pytest.raises(errors.InputError, match="KV capacity of 256"):
        reference.generate(photos["camera"], prompt="describe " * 120, config=config)


@pytest.mark.parity("coreml")
@pytest.mark.parametrize("family", DUAL_ENCODERS)
def test_fp16_package_matches_pytorch(workspace, photos, family):
    bundle_dir = coreml_bundles(workspace, family)["fp16"]
    bundle = load_bundle(bundle_dir)                                       # verifies every file of the packages
    assert {spec.format for spec in bundle.components.values()} == {"mlpackage"}
    subset = {k: photos[k] for k in ("astronaut", "coffee", "camera", "logo")}   # 4 images: the batch-1 loop
    report = dual_encoder_parity(bundle_dir, workspace.checkpoint(family), photos=subset)
    for name, row in report["components"].items():  # max abs relative to the output scale: the next test
        assert row["cosine_min"] >= get_family(family).tolerances.limit("min_cosine", "fp16", "coreml", name), \
            (name, row)
    assert report["zero_shot"]["top1_agreement"] == 1.0
    assert_passes(report)
    assert set(report["neural_engine"]) == {"image_encoder", "text_encoder"}


@pytest.mark.parametrize("family", DUAL_ENCODERS)
def test_fp16_max_abs_relative_to_output_scale(workspace, photos, family):
    """The issue's fp16 line: max abs error <= 1e-2 of the output's scale (its largest magnitude), per component."""
    import torch

    bundle_dir = coreml_bundles(workspace, family)["fp16"]
    from pocketvlm.export.verify.parity import load_dual_encoder

    runner = load_dual_encoder(bundle_dir)
    model = families()[family].load_model(workspace.checkpoint(family))
    images = [photos["astronaut"], photos["coffee"]]
    pixels = runner.pixel_values(images)
    text = runner.tokenizer.encode(["a photo of a cat", "a cup of coffee"])
    with torch.no_grad():
        ref_image = model.get_image_features(pixel_values=torch.from_numpy(pixels))
        ref_text = model.get_text_features(**{k: torch.from_numpy(v) for k, v in text.items()
                                              if k in runner.sessions["text_encoder"].input_names})
    ref_image = getattr(ref_image, "pooler_output", ref_image).numpy()
    ref_text = getattr(ref_text, "pooler_output", ref_text).numpy()
    got_image = runner.image_features(images)
    got_text = runner.sessions["text_encoder"].run(text)["text_embeds"]
    relative = families()[family].tolerances.limit("max_abs_relative", "fp16", "coreml")  # 1e-2
    for ref, got in ((ref_image, got_image), (ref_text, got_text)):
        assert np.abs(ref - got).max() <= relative * np.abs(ref).max()


@pytest.mark.parametrize("family", DUAL_ENCODERS)
def test_compressed_packages(workspace, photos, family):
    bundles = coreml_bundles(workspace, family)
    subset = {k: photos[k] for k in ("astronaut", "coffee", "camera")}
    tolerances = get_family(family).tolerances  # tiny random towers; trained figures in benchmarks
    sizes = {}
    for method in ("int8", "int4", "palette4"):
        bundle = load_bundle(bundles[method])
        record = bundle.manifest["components"]["image_encoder"]["quantization"]
        assert record["method"] == method
        report = dual_encoder_parity(bundles[method], workspace.checkpoint(family), photos=subset)
        for name, row in report["components"].items():
            assert row["cosine_min"] >= tolerances.limit("min_cosine", method, "coreml", name), (method, name, row)
        assert_passes(report)
        sizes[method] = bundle.total_bytes
        program = MILProgram(bundle.file(bundle.components["image_encoder"].file))
        kinds = set(program.op_types)
        expected = "constexpr_lut_to_dense" if method == "palette4" else "constexpr_blockwise_shift_scale"
        assert expected in kinds
        if method in ("int4", "palette4"):  # first and last weight layers kept at 8 bits, named in the manifest
            assert len(record["eight_bit_weights"]) >= 2
    assert sizes["int4"] < sizes["int8"] < load_bundle(bundles["fp16"]).total_bytes
    assert sizes["palette4"] < sizes["int8"]
    risks = {f["risk"] for f in ane_risks(load_bundle(bundles["int4"]).file("image_encoder.mlpackage"))}
    assert "per-block quantized weights" in risks
    risks = {f["risk"] for f in ane_risks(load_bundle(bundles["palette4"]).file("image_encoder.mlpackage"))}
    assert "per-block quantized weights" not in risks


# -- the evaluator's pieces against independent references -------------------------------------------------------------
def test_blob_reader_matches_coremltools_reader(workspace):
    from coremltools.libmilstoragepython import _BlobStorageReader

    bundles = coreml_bundles(workspace, "clip")
    checked = set()
    for method in METHODS:
        package = load_bundle(bundles[method]).file("image_encoder.mlpackage")
        blob_path = package / "Data/com.apple.CoreML/weights/weight.bin"
        ours, theirs = BlobFile(blob_path), _BlobStorageReader(str(blob_path))
        program = MILProgram(package)
        for operation in program.block.operations:
            for argument in operation.inputs.values():
                for binding in argument.arguments:
                    value = binding.value if binding.WhichOneof("binding") == "value" else None
                    if value is not None and value.WhichOneof("value") == "blobFileValue":
                        _check_blob(ours, theirs, value, checked)
            if operation.type == "const" and operation.attributes["val"].WhichOneof("value") == "blobFileValue":
                _check_blob(ours, theirs, operation.attributes["val"], checked)
    assert {"FLOAT16", "INT8", "INT4", "UINT4"} <= checked


def _check_blob(ours, theirs, value, checked):
    from coremltools.proto import MIL_pb2

    dtype = MIL_pb2.DataType.Name(value.type.tensorType.dataType)
    shape = tuple(int(d.constant.size) for d in value.type.tensorType.dimensions)
    reader = {"FLOAT16": theirs.read_fp16_data, "INT8": theirs.read_int8_data, "INT4": theirs.read_int4_data,
              "UINT4": theirs.read_uint4_data, "UINT8": theirs.read_uint8_data}.get(dtype)
    if reader is None:
        return
    expected = np.asarray(reader(int(value.blobFileValue.offset)))
    got = ours.read(int(value.blobFileValue.offset), dtype, shape).reshape(-1)
    if dtype == "FLOAT16":
        expected = expected.view(np.float16) if expected.dtype == np.uint16 else expected.astype(np.float16)
    np.testing.assert_array_equal(got, expected.reshape(-1)[: got.size])
    checked.add(dtype)


def test_conv_and_gather_nd_match_torch():
    import torch

    from pocketvlm.export.targets.coreml.mil_ops import OPS

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 9, 9)).astype(np.float32)
    w = rng.standard_normal((8, 2, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    got = OPS["conv"](x, w, b, strides=[1, 2, 2], pad_type="custom", pad=[0, 0, 1, 1, 1, 1], dilations=[1, 1, 1],
                      groups=2)
    ref = torch.nn.functional.conv3d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=(1, 2, 2),
                                     padding=(0, 1, 1), groups=2).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    table = rng.standard_normal((3, 5, 7)).astype(np.float32)
    index = np.array([[0, 4], [2, 1], [1, 3]])
    np.testing.assert_array_equal(OPS["gather_nd"](table, index), table[index[:, 0], index[:, 1]])


def test_stateful_program_updates_its_state(tmp_path):
    """read_state / write_state act on the caller's buffers, as Core ML's MLState does (the KV-cache mechanism)."""
    import torch

    class Cache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("cache", torch.zeros(1, 2, 8, 4, dtype=torch.float16))
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            self.cache[:, :, 3:4, :] = self.proj(x).to(torch.float16)
            return (self.cache.float() * mask[:, None, :, None]).sum(2)

    torch.manual_seed(0)
    module = Cache().eval()
    x, mask = torch.randn(1, 2, 1, 4), torch.ones(1, 8)
    program = torch.export.export(module, (x, mask)).run_decompositions()
    package = tmp_path / "state.mlpackage"
    ct.convert(program, inputs=[ct.TensorType(name="x", shape=x.shape), ct.TensorType(name="mask", shape=mask.shape)],
               states=[ct.StateType(wrapped_type=ct.TensorType(shape=(1, 2, 8, 4), dtype=np.float16), name="cache")],
               minimum_deployment_target=ct.target.iOS18, skip_model_load=True).save(str(package))
    evaluator = MILProgram(package)
    assert set(evaluator.states) == {"cache"}
    with pytest.raises(CoreMLEvaluatorError, match="stateful"):
        evaluator.run({"x": x.numpy(), "mask": mask.numpy()})
    state = evaluator.new_state()
    (out,) = evaluator.run({"x": x.numpy(), "mask": mask.numpy()}, state).values()
    expected = module.proj(x).detach().numpy()[0, :, 0]
    np.testing.assert_allclose(state["cache"][0, :, 3].astype(np.float32), expected, atol=2e-3)
    np.testing.assert_allclose(out[0].astype(np.float32), expected, atol=2e-3)
    assert not state["cache"][0, :, :3].any()  # only the written slot changed
    assert {f["risk"] for f in ane_risks(package)} >= {"stateful model (KV cache in Core ML states)"}


# -- unsupported requests fail by name ---------------------------------------------------------------------------------
def test_missing_op_is_named(workspace, monkeypatch):
    from pocketvlm.export.targets.coreml import mil_ops

    package = load_bundle(coreml_bundles(workspace, "clip")["fp16"]).file("image_encoder.mlpackage")
    monkeypatch.delitem(mil_ops.OPS, "layer_norm")
    with pytest.raises(CoreMLEvaluatorError, match=r"\['layer_norm'\]"):
        EvaluatorPredictor(package)


@pytest.mark.parametrize(("quant", "target", "match"), [
    ("int4", "iOS17", "int4 .*need iOS 18"),
    ("palette4", "iOS16", "palette4 needs iOS 18"),
    ("fp32", "iOS18", r"fp32 \(image_encoder\) is not available for --target coreml"),
])
def test_unsupported_settings_are_refused_by_name(workspace, tmp_path, quant, target, match):
    from pocketvlm.export.loop import export_bundle

    with pytest.raises(errors.QuantizationError, match=match):
        export_bundle(workspace.checkpoint("clip"), tmp_path / "b", target="coreml", quant=QuantConfig.parse(quant),
                      deployment_target=target)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_onnx_only_settings_and_palette_on_other_targets_are_refused(workspace, tmp_path):
    from pocketvlm.export.loop import export_bundle

    zero_points = tmp_path / "q.json"
    zero_points.write_text(json.dumps({"default": {"method": "int4", "symmetric": False}}))
    with pytest.raises(errors.QuantizationError, match="'symmetric' is not available for --target coreml"):
        export_bundle(workspace.checkpoint("clip"), tmp_path / "b", target="coreml",
                      quant=QuantConfig.parse(str(zero_points)))
    gptq = tmp_path / "g.json"
    gptq.write_text(json.dumps({"default": {"method": "int4", "gptq": True}}))
    with pytest.raises(errors.QuantizationError, match="no calibration feeds"):
        export_bundle(workspace.checkpoint("clip"), tmp_path / "b", target="coreml", quant=QuantConfig.parse(str(gptq)))
    refused = r"palette4 \(image_encoder\) is not available for --target onnx \(offered by --target coreml\)"
    with pytest.raises(errors.QuantizationError, match=refused):
        export_bundle(workspace.checkpoint("clip"), tmp_path / "c", quant=QuantConfig.parse("palette4"))


def test_cli_refuses_and_runtime_explains_off_macos(workspace, tmp_path, capsys):
    from pocketvlm.cli.main import main

    code = main(["export", "--model", str(workspace.checkpoint("clip")), "--out", str(tmp_path / "b"),
                 "--target", "coreml", "--quant", "int4", "--deployment-target", "iOS17"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "iOS 18" in err[0]
    if sys.platform != "darwin":
        code = main(["embed", "--bundle", str(coreml_bundles(workspace, "clip")["fp16"]), "--text", "a cat",
                     "--out", str(tmp_path / "e.npy")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "Core ML runs only on macOS" in err[0]


def test_gptq_int4_rewrites_coremltools_codes(workspace, photos):
    """GPTQ for Core ML int4: calibrated on feeds recorded through the fp32 ONNX bundle, its codes and scales replace
    coremltools' round-to-nearest ones in weight.bin; the evaluator decompresses exactly GPTQ's weights, and the
    decoder's logits move closer to PyTorch's than round-to-nearest's."""
    from pocketvlm.export.quant.blockwise import dequantize_blocks
    from pocketvlm.export.quant.calibration import FeedRecorder
    from pocketvlm.export.quant.config import QuantSpec
    from pocketvlm.export.quant.gptq import gptq_quantize
    from pocketvlm.export.targets.coreml.gptq import calibrate
    from pocketvlm.export.targets.coreml.mil_ops import OPS
    from pocketvlm.runtime.generation import GenerationConfig
    from pocketvlm.runtime.vlm import VisionLanguageModel

    checkpoint = workspace.checkpoint("idefics3", "fp16")
    runner = VisionLanguageModel.load(workspace.bundle("idefics3", "fp32", "fp16"))
    recorder = FeedRecorder(runner.sessions["text_decoder"])
    runner.sessions["text_decoder"] = recorder
    for name in ("chelsea", "coins", "rocket", "page"):
        runner.generate(photos[name], config=GenerationConfig(max_new_tokens=6))
    gptq = QuantConfig(QuantSpec(method="fp16"), {"text_decoder": QuantSpec(method="int4", gptq=True)})
    out = export_bundles(checkpoint, [(workspace.root / "coreml-idefics3-gptq", gptq)], target="coreml",
                         isolate=False, shapes=DEFAULT_SHAPES, calibration={"text_decoder": recorder.feeds})[0]
    assert "GPTQ" in load_bundle(out).manifest["components"]["text_decoder"]["quantization"]["weights"]
    # one layer, decompressed by the evaluator, against GPTQ's own dequantization
    program = MILProgram(out / "text_decoder.mlpackage", "decode")
    model = families()["idefics3"].load_model(checkpoint)
    reference = calibrate(model, families()["idefics3"].component("text_decoder"), recorder.feeds)
    weights = reference["weights"]
    op = next(o for o in program.block.operations if o.type == "constexpr_blockwise_shift_scale"
              and "layers_1_mlp_down_proj" in o.outputs[0].name)
    args = {k: program._argument(v.arguments[0], {}) for k, v in op.inputs.items()}
    decompressed = OPS[op.type](**args)
    name = next(n for n in weights if op.outputs[0].name.startswith(n))
    assert np.asarray(args["data"]).dtype == np.int8 and np.asarray(args["data"]).min() >= -8
    rtn = load_bundle(coreml_vlm(workspace, "idefics3", "int4"))
    rtn_program = MILProgram(rtn.file("text_decoder.mlpackage"), "decode")
    rtn_op = next(o for o in rtn_program.block.operations if o.outputs[0].name == op.outputs[0].name)
    rtn_data = rtn_program._argument(rtn_op.inputs["data"].arguments[0], {})
    assert (np.asarray(rtn_data) != np.asarray(args["data"])).any()  # the codes were rewritten
    packed, scales, _ = gptq_quantize(weights[name].T, reference["hessians"][name], 32)
    expected = dequantize_blocks(packed, scales.astype(np.float16).astype(np.float32), weights[name].shape[1]).T
    np.testing.assert_allclose(decompressed, expected, rtol=2e-3, atol=1e-6)
    subset = {k: photos[k] for k in ("astronaut", "camera", "coffee")}
    ours = vlm_parity(out, checkpoint, photos=subset, steps=9)["photos"]
    theirs = vlm_parity(rtn.path, checkpoint, photos=subset, steps=9)["photos"]
    assert np.mean([r["logits"]["cosine_min"] for r in ours]) > np.mean([r["logits"]["cosine_min"] for r in theirs])


def test_normalisation_statistics_stay_float32(tmp_path):
    """A residual stream above fp16's square root (real SmolLM2 reaches 25,600) overflows x * x in an fp16 RMSNorm
    and normalises rows to zero; the converter keeps those statistics in float32 and the evaluator computes them so."""
    import torch

    from pocketvlm.export.targets.coreml.common import compute_precision

    class Norm(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    x = torch.randn(1, 4, 64) * 20000
    program = torch.export.export(Norm(), (x,)).run_decompositions()
    package = tmp_path / "norm.mlpackage"
    ct.convert(program, inputs=[ct.TensorType(name="x", shape=x.shape)], minimum_deployment_target=ct.target.iOS18,
               compute_precision=compute_precision(ct), skip_model_load=True).save(str(package))
    (out,) = MILProgram(package).run({"x": x.numpy()}).values()
    np.testing.assert_allclose(out.astype(np.float32), Norm()(x).numpy(), atol=2e-2)


def test_stateful_decoder_below_ios18_is_refused(workspace, tmp_path):
    from pocketvlm.export.loop import export_bundle

    with pytest.raises(errors.ExportError, match="states, which need iOS 18"):
        export_bundle(workspace.checkpoint("idefics3", "fp16"), tmp_path / "b", target="coreml",
                      quant=QuantConfig.parse("fp16"), deployment_target="iOS17", shapes=DEFAULT_SHAPES)
    assert not list(tmp_path.iterdir())  # nothing half-written
