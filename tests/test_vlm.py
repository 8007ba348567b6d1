"""VLM export and runtime: greedy generation equal to transformers generate(), quantized logits, tied storage."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from pocketvlm.export.registry import get_family
from pocketvlm.export.verify.vlm_parity import vlm_parity
from pocketvlm.runtime import errors
from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.manifest import load_bundle
from pocketvlm.runtime.vlm import VisionLanguageModel
from tests.cases import DYNAMIC_RESOLUTION_FAMILIES, SPLIT_VLM_FAMILIES, VLM_FAMILIES

LOOP_SPLIT_FAMILIES = tuple(name for name in ("idefics3", "qwen3_vl") if name in SPLIT_VLM_FAMILIES)


def assert_passes(report):
    """Every verdict line of a parity report passes (thresholds: the family's registered tolerances)."""
    assert report["pass"], [line for line in report["checks"] if not line["pass"]]


def assert_chunked_greedy_equal(report, steps: int = 16):
    """A static-shape decoder's parity report: every prompt ran as several prefill chunks, and its ``steps`` greedy
    tokens (varied ones, not a repeated token) equal PyTorch's; every verdict passes."""
    for row in report["photos"]:
        assert row["prompt_tokens"] > 16, "the prompt should need several prefill chunks"
        assert row["greedy"]["equal"], row["greedy"]
        assert len(row["greedy"]["reference"]) == steps
        assert len(set(row["greedy"]["reference"])) > 3
    assert_passes(report)


def two_sizes(photos):
    """A square and a non-square image, small enough for tiny configs."""
    return {"astronaut-140": photos["astronaut"].resize((140, 140)),
            "coffee-150x100": photos["coffee"].resize((150, 100))}


@pytest.mark.parity("onnx")
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_fp32_greedy_equals_transformers_generate(workspace, photos, family):
    report = vlm_parity(workspace.bundle(family, "fp32", "varied"), workspace.checkpoint(family, "varied"),
                        photos=two_sizes(photos), steps=16)
    grids = set()
    for row in report["photos"]:
        assert row["greedy"]["equal"], row["greedy"]
        assert len(row["greedy"]["reference"]) == 16
        assert len(set(row["greedy"]["reference"])) > 3, "the tiny model should generate varied tokens"
        grids.add(row["image_tokens"])
    assert len(grids) == 2
    assert_passes(report)  # vision features, decoder and end-to-end logits, greedy tokens: registered fp32 limits


@pytest.mark.parametrize("family", VLM_FAMILIES)
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_teacher_forced_logits(workspace, photos, family, quant):
    report = vlm_parity(workspace.bundle(family, quant, "standard"), workspace.checkpoint(family, "standard"),
                        photos=two_sizes(photos), steps=16)
    min_cosine = get_family(family).tolerances.limit("logits_min_cosine", quant, "onnx")
    for row in report["photos"]:
        assert len(row["logits"]["per_step_cosine"]) == 16
        assert min(row["logits"]["per_step_cosine"]) >= min_cosine, row["logits"]
    assert_passes(report)


@pytest.mark.parametrize("quant", ["fp32", "int8", "int4"])
def test_tied_embedding_table_is_stored_once(workspace, quant):
    bundle = load_bundle(workspace.bundle("qwen2_vl", quant, "standard"))
    manifest = bundle.manifest
    assert manifest["embeddings"]["tied"] and manifest["embeddings"]["storage"] == "text_decoder"
    assert set(bundle.components) == {"vision_encoder", "text_decoder"}
    vocab, hidden = manifest["decoder"]["vocab_size"], manifest["decoder"]["hidden_size"]
    graph = onnx.load(str(bundle.file("text_decoder.onnx"))).graph
    table_bytes = vocab * hidden * (4 if quant == "fp32" else 1)  # fp32, or the shared 8-bit table
    vocab_sized = [i for i in graph.initializer if vocab in i.dims]
    tables = [i for i in vocab_sized if len(i.raw_data) >= 0.9 * table_bytes]
    assert len(tables) == 1, [(t.name, list(t.dims)) for t in tables]
    if quant != "fp32":  # the shared table's LM head too runs at the recorded level (level 0 is ORT's slow path)
        level = manifest["components"]["text_decoder"]["quantization"]["accuracy_level"]
        nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
        assert any("lm_head" in n.name for n in nbits)
        assert {onnx.helper.get_attribute_value(a) for n in nbits for a in n.attribute
                if a.name == "accuracy_level"} == {level} and level == 4
        assert all(any(a.name == "accuracy_level" for a in n.attribute) for n in nbits)
    # the table plus its block scales / zero points: no second copy for the LM head
    assert sum(len(i.raw_data) for i in vocab_sized) <= 1.2 * table_bytes


def test_runtime_generation_features(workspace, photos):
    model = VisionLanguageModel.load(workspace.bundle("qwen2_vl", "fp32", "varied"))
    image = photos["chelsea"].resize((120, 90))
    pieces = []
    result = model.generate(image, "Describe this image.", GenerationConfig(max_new_tokens=8), on_text=pieces.append)
    assert "".join(pieces) == result.text
    assert result.prompt_tokens > 10 and 1 <= len(result.token_ids) <= 8
    assert {"image_encode_s", "prefill_s", "decode_s"} <= result.timings.keys()
    sampled = [model.generate(image, "Describe.", GenerationConfig(max_new_tokens=8, do_sample=True, temperature=0.8,
                                                                   top_k=20, top_p=0.9, seed=7)).token_ids
               for _ in range(2)]
    assert sampled[0] == sampled[1]
    stop = result.token_ids[2]
    stopped = model.generate(image, "Describe this image.", GenerationConfig(max_new_tokens=8, stop_token_ids=(stop,)))
    assert stopped.token_ids[-1] == stop and stopped.stop_reason == "stop_token"


def test_vlm_bad_inputs(workspace, photos, tmp_path):
    model = VisionLanguageModel.load(workspace.bundle("qwen2_vl", "fp32", "varied"))
    image = photos["coffee"].resize((100, 80))
    with pytest.raises(errors.InputError, match="exceeds the model's context"):
        model.generate(image, "why " * 2000, GenerationConfig(max_new_tokens=4))
    with pytest.raises(errors.InputError, match="empty"):
        model.generate(image, "  ")
    with pytest.raises(errors.ImageError, match="aspect ratio"):
        model.generate(photos["coffee"].resize((600, 2)), "hi")
    with pytest.raises(errors.InputError):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(errors.BundleError, match="not a VLM"):
        VisionLanguageModel.load(workspace.bundle("clip", "fp32"))
    import json
    import shutil

    broken = tmp_path / "no-vision"
    shutil.copytree(workspace.bundle("qwen2_vl", "fp32", "varied"), broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["components"]["vision_encoder"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(errors.BundleError, match="has no component 'vision_encoder'"):
        VisionLanguageModel.load(broken)


def test_deepstack_features_reach_the_decoder(workspace, photos):
    model = VisionLanguageModel.load(workspace.bundle("qwen3_vl", "fp32", "varied"))
    input_ids, processed = model.prepare(photos["astronaut"].resize((128, 96)), "What is in the image?")
    vision = model.encode_image(processed)
    assert vision["deepstack_embeds"].shape[1:] == vision["image_embeds"].shape
    config = GenerationConfig(max_new_tokens=4)
    with_deepstack = model.generate_ids(input_ids, processed, config, forced=[1, 2, 3, 4]).logits
    original = model.encode_image
    model.encode_image = lambda p: {**original(p), "deepstack_embeds": np.zeros_like(vision["deepstack_embeds"])}
    without = model.generate_ids(input_ids, processed, config, forced=[1, 2, 3, 4]).logits
    assert np.abs(np.stack(with_deepstack) - np.stack(without)).max() > 1e-3


def test_caption_and_ask_cli(workspace, photos, tmp_path, capsys):
    from pocketvlm.cli.main import main

    image = tmp_path / "cat.png"
    photos["chelsea"].resize((120, 90)).save(image)
    bundle = str(workspace.bundle("qwen2_vl", "fp32", "varied"))
    capsys.readouterr()
    assert main(["caption", "--bundle", bundle, "--image", str(image), "--max-new-tokens", "6", "--stats"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() and "tokens/s" in out.err
    assert main(["ask", "--bundle", bundle, "--image", str(image), "--question", "What is it?",
                 "--max-new-tokens", "4", "--sample", "--seed", "3", "--top-p", "0.9"]) == 0
    assert main(["caption", "--bundle", str(workspace.bundle("clip", "fp32")), "--image", str(image)]) == 2
    assert "not a VLM" in capsys.readouterr().err


@pytest.mark.parametrize("family", LOOP_SPLIT_FAMILIES)
def test_split_vision_stages_chain_to_the_unsplit_encoder(workspace, photos, tmp_path, family):
    """A split bundle through the export loop: the runtime chains its stages to the unsplit bundle's vision
    outputs, generates its tokens, and the manifest says what crosses. Two families whose split differs most
    (Idefics3's own split point; Qwen3-VL's patch-embed split with deepstack features crossing); every family's split
    on every target is checked by tests/test_vision_split.py."""
    from pocketvlm.export.loop import export_bundle

    split = VisionLanguageModel.load(export_bundle(workspace.checkpoint(family, "varied"), tmp_path / "split",
                                                   split_vision=True))
    whole = VisionLanguageModel.load(workspace.bundle(family, "fp32", "varied"))
    assert {"vision_frontend", "vision_transformer"} <= set(split.sessions) and "vision_encoder" not in split.sessions
    report = split.bundle.manifest["vision_split"]
    assert report["interface"]["name"] == "vision_hidden"
    for example in report["bytes_per_image"].values():
        assert example["float16"] == int(np.prod(example["shape"])) * 2 == example["float32"] // 2
    limit = get_family(family).tolerances.split_chain_max_abs
    for image in two_sizes(photos).values():
        _, processed = split.prepare(image, "hi")
        got, ref = split.encode_image(processed), whole.encode_image(processed)
        assert got.keys() == ref.keys()
        for name in ref:
            assert np.abs(got[name] - ref[name]).max() <= limit
    tokens = split.generate(photos["coffee"].resize((150, 100)), "What is in the image?",
                            GenerationConfig(max_new_tokens=8)).token_ids
    assert tokens == whole.generate(photos["coffee"].resize((150, 100)), "What is in the image?",
                                    GenerationConfig(max_new_tokens=8)).token_ids


def test_idefics3_prompt_and_pixels_match_the_hf_processor(workspace, photos):
    from transformers import AutoImageProcessor, AutoTokenizer, Idefics3Processor

    checkpoint = workspace.checkpoint("idefics3", "varied")
    model = VisionLanguageModel.load(workspace.bundle("idefics3", "fp32", "varied"))
    processor = Idefics3Processor(AutoImageProcessor.from_pretrained(checkpoint),
                                  AutoTokenizer.from_pretrained(checkpoint),
                                  image_seq_len=model.image_config["image_seq_len"])
    for image in [photos["astronaut"].resize((140, 140)), photos["coffee"].resize((150, 100)),
                  photos["camera"].resize((20, 30))]:
        ids, processed = model.prepare(image, "What is in the image?")
        text = processor.tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}],
            add_generation_prompt=True, tokenize=False)
        ref = processor(images=[image], text=text, return_tensors="np", add_special_tokens=False)
        assert np.array_equal(ref["input_ids"][0], ids)
        assert np.abs(ref["pixel_values"][0] - processed.pixel_values).max() <= 1e-5


@pytest.mark.parametrize("family", DYNAMIC_RESOLUTION_FAMILIES)
def test_qwen_prompt_and_pixels_match_the_hf_image_processor(workspace, photos, family):
    from transformers import AutoImageProcessor, AutoTokenizer

    checkpoint = workspace.checkpoint(family, "varied")
    model = VisionLanguageModel.load(workspace.bundle(family, "fp32", "varied"))
    tokenizer, processor = AutoTokenizer.from_pretrained(checkpoint), AutoImageProcessor.from_pretrained(checkpoint)
    for image in [photos["astronaut"].resize((140, 140)), photos["coffee"].resize((150, 100))]:
        ids, processed = model.prepare(image, "What is in the image?")
        ref = processor(image, return_tensors="np")
        tokens = int(ref["image_grid_thw"].prod()) // processor.merge_size**2
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}],
            add_generation_prompt=True, tokenize=False).replace("<|image_pad|>", "<|image_pad|>" * tokens)
        assert np.array_equal(tokenizer(text, add_special_tokens=False)["input_ids"], ids)
        assert np.abs(ref["pixel_values"] - processed.pixel_values).max() <= 1e-5
