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
