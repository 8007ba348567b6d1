"""The bundle contract: manifests validate against the JSON Schema in the repo and describe every file."""

from __future__ import annotations

import json

import jsonschema
import pytest

from pocketvlm.runtime.manifest import MANIFEST_NAME, SCHEMA_PATH, SCHEMA_VERSION, load_bundle, sha256_file


@pytest.mark.parametrize(("family", "quant"), [("clip", "fp32"), ("clip", "int8"), ("siglip", "int4"),
                                               ("siglip", "fp16")])
def test_manifest_matches_schema_and_files(workspace, family, quant):
    bundle_dir = workspace.bundle(family, quant)
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))
    assert manifest["schema_version"] == SCHEMA_VERSION
    on_disk = sorted(p.name for p in bundle_dir.iterdir() if p.name != MANIFEST_NAME)
    assert on_disk == sorted(f["path"] for f in manifest["files"])
    for entry in manifest["files"]:
        assert sha256_file(bundle_dir / entry["path"]) == entry["sha256"]
    for name, comp in manifest["components"].items():
        assert comp["file"] == f"{name}.onnx"
        assert comp["quantization"]["method"] == quant
        assert all(isinstance(d, (int, str)) for t in comp["inputs"] + comp["outputs"] for d in t["shape"])
    assert {"torch", "transformers", "onnxruntime"} <= manifest["source"]["tools"].keys()
    assert manifest["preprocessing"]["image"]["layout"] == "NCHW"
    assert manifest["tokenizer"]["file"] == "tokenizer.json"


def test_schema_refuses_what_a_reader_could_not_use(workspace):
    """The schema is not a constant: static-shape, Core ML and VLM requirements each refuse a manifest without them
    (every manifest the suite exports is validated by tests/conftest.py)."""
    schema = json.loads(SCHEMA_PATH.read_text())
    good = json.loads((workspace.bundle("clip", "fp32") / MANIFEST_NAME).read_text())
    jsonschema.validate(good, schema)
    cases = {
        "a tflite component without its static shapes": lambda m: m["components"]["image_encoder"].update(
            format="tflite"),
        "a Core ML component without its deployment target": lambda m: m["components"]["image_encoder"].update(
            format="mlpackage", static={"signatures": {"image_encoder": {"pixel_values": [1, 3, 32, 32]}}}),
        "a VLM without decoder or chat template": lambda m: m.update(task="image_text_to_text"),
        "a special token id that is text": lambda m: m["special_tokens"].update(eos_token_id="2"),
        "a Qwen image config without its patch size": lambda m: m["preprocessing"].update(
            image={"kind": "qwen2_vl", "resample": "bicubic", "rescale_factor": 1.0, "mean": [0, 0, 0],
                   "std": [1, 1, 1]}),
    }
    for what, mutate in cases.items():
        bad = json.loads(json.dumps(good))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
            pytest.fail(f"schema accepted {what}")


def test_onnx_graphs_declare_what_the_manifest_says(workspace):
    import onnx

    bundle = load_bundle(workspace.bundle("clip", "int4"))
    for spec in bundle.components.values():
        graph = onnx.load(str(bundle.file(spec.file))).graph
        assert [i.name for i in graph.input] == [t.name for t in spec.inputs]
        assert [o.name for o in graph.output] == [t.name for t in spec.outputs]
        dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        assert isinstance(dims[0], str), "batch must stay dynamic"


def test_schema_rejects_a_malformed_manifest(workspace):
    manifest = json.loads((workspace.bundle("clip", "fp32") / MANIFEST_NAME).read_text())
    manifest["components"]["image_encoder"]["quantization"]["method"] = "int3"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))
