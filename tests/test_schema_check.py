"""runtime/schema_check.py, the runtime's dependency-free JSON Schema validator, judged against jsonschema.

Every verdict is compared with an independent oracle (jsonschema's Draft202012Validator) or a concrete expected
message: hand-written manifests and golden records (valid as they stand), a hypothesis property test that mutates
them (deleted keys, values of another type, huge / negative numbers, path-like strings, the schemas' own enum
values), the depth cap on hostile input, and the construction-time rejection of keywords it does not implement.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketvlm.runtime.schema_check import (
    MAX_DEPTH,
    SchemaError,
    Validator,
    first_error,
    load_schema,
    schema_errors,
)

jsonschema = pytest.importorskip("jsonschema")

SHA = "ab" * 32
LAYOUT = [f"past_{kv}_{i}" for i in range(2) for kv in ("key", "value")]


def _tensor(name: str, dtype: str = "float32", shape: list | None = None) -> dict:
    return {"name": name, "dtype": dtype, "shape": ["batch", 3, "past", 64] if shape is None else shape}


def _component(file: str, fmt: str, inputs: list, outputs: list, method: str = "fp32", **extra: Any) -> dict:
    return {"file": file, "sha256": SHA, "bytes": 1234, "format": fmt, "inputs": inputs, "outputs": outputs,
            "quantization": {"method": method, "block_size": None, "symmetric": True, "op_types": ["MatMul"]},
            **extra}


def _files(*names: str) -> list[dict]:
    return [{"path": n, "sha256": SHA, "bytes": 10 + i} for i, n in enumerate(names + ("golden.json", "golden.png"))]


STATIC = {"signatures": {"serving_default": {"input_ids": [1, 8], "pixel_values": [1, 3, 64, 64]}},
          "loop_inputs": ["input_ids"], "dtypes": {"input_ids": "int32"}, "prefill_length": 8, "kv_capacity": 64,
          "image_token_id": None, "states": []}
NORM = {"resample": "bicubic", "rescale_factor": 1 / 255, "mean": [0.48, 0.45, 0.4], "std": [0.26, 0.26, 0.27]}
MANIFEST_VLM = {
    "schema_version": 1, "pocketvlm_version": "0.1.0", "family": "idefics3", "model_type": "idefics3",
    "task": "image_text_to_text", "target": "onnx", "created_utc": "2025-01-01T00:00:00Z",
    "source": {"model_dir_name": "tiny", "config_sha256": SHA, "weights_sha256": {"model.safetensors": SHA},
               "architectures": ["Idefics3ForConditionalGeneration"], "tools": {"torch": "2.5.1"}},
    "quantization": {"method": "int4", "block_size": 32},
    "components": {
        "vision_encoder": _component("vision_encoder.onnx", "onnx", [_tensor("pixel_values", shape=[1, 3, 64, 64])],
                                     [_tensor("image_embeds", shape=["image_tokens", 64])], "int4", opset=18),
        "text_decoder": _component(
            "text_decoder.bin", "qnn_context", [_tensor("input_ids", "int64", ["batch", "sequence"])]
            + [_tensor(n) for n in LAYOUT], [_tensor("logits")] + [_tensor("present" + n[4:]) for n in LAYOUT],
            "a16w8", static=STATIC, qnn={"qairt": "2.31", "contexts": {"sm8650": {"decode": "decode.bin"}}}),
    },
    "files": _files("vision_encoder.onnx", "text_decoder.bin", "tokenizer.json", "sub/dir/chat_template.jinja"),
    "preprocessing": {"image": {"kind": "idefics3", **NORM, "longest_edge": 64, "tile_size": 64, "split": False,
                                "image_seq_len": 16}},
    "tokenizer": {"file": "tokenizer.json", "max_length": 2048, "padding": "longest", "padding_side": "left",
                  "pad_token_id": 2, "truncation": False},
    "special_tokens": {"image_token": "<image>", "image_token_id": 49, "eos_token_id": 2, "bos_token": None},
    "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
    "decoder": {"num_layers": 2, "kv_heads": 3, "head_dim": 64, "hidden_size": 192, "vocab_size": 100,
                "position_ids": "arange", "mrope_section": [16, 24, 24]},
    "generation": {"eos_token_ids": [2, 3], "max_context": 2048},
    "embeddings": {"tied": True, "storage": "text_decoder"},
    "golden": {"file": "golden.json", "image": "golden.png", "golden_version": 1,
               "stages": ["preprocess", "vision_encoder", "prompt", "text_decoder", "generation"]},
}
MANIFEST_DUAL = {
    "schema_version": 1, "family": "clip", "model_type": "clip", "task": "zero_shot_image_classification",
    "target": "tflite", "source": {"config_sha256": SHA, "tools": {}},
    "components": {
        "image_encoder": _component("image_encoder.tflite", "tflite", [_tensor("pixel_values", shape=[1, 3, 64, 64])],
                                    [_tensor("image_embeds", shape=[1, 32])], "int8", static=STATIC),
        "text_encoder": _component("text_encoder.mlpackage", "mlpackage", [_tensor("input_ids", "int32", [1, 8])],
                                   [_tensor("text_embeds", shape=[1, 32])], static=STATIC,
                                   coreml={"deployment_target": "iOS17", "compute_precision": "float16",
                                           "program": "mlprogram", "functions": ["main"], "states": []}),
    },
    "files": _files("image_encoder.tflite", "text_encoder.mlpackage"),
    "preprocessing": {"image": {"convert_rgb": "always", "resize": {"shortest_edge": 64}, **NORM,
                                "center_crop": {"height": 64, "width": 64}, "layout": "NCHW"}},
    "tokenizer": {"file": "tokenizer.json", "max_length": 8, "padding": "max_length", "pad_token_id": 0},
    "special_tokens": {"pad_token_id": 0, "eos_token": "</s>"},
    "zero_shot": {"activation": "softmax", "logit_scale": 100.0, "logit_bias": None,
                  "prompt_template": "a photo of a {}", "embed_dim": 32, "normalize": "l2"},
    "vision_split": {"boundary": "vision_frontend -> vision_transformer", "component": "image_encoder",
                     "stages": {"frontend": "vision_frontend"},
                     "interface": {"name": "vision_hidden", "shape": ["batch", 17, 32], "dtype": "float32",
                                   "class_token": True, "mask": None, "transformer_inputs": ["vision_hidden"]},
                     "bytes_per_patch": {"float32": 128, "float16": 64, "int8": 32},
                     "bytes_per_image": {"224x224": {"float32": 8, "float16": 4, "int8": 2, "shape": [1, 17, 32],
                                                     "patches": 16, "class_tokens": 1}}},
    "golden": {"file": "golden.json", "image": "golden.png", "golden_version": 1,
               "stages": ["preprocess", "image_encoder", "text", "text_encoder", "scores"]},
}
FLOATS = {"shape": [1, 3], "dtype": "float32", "mean": 0.1, "std": 0.2,
          "samples": {"index": [0, 2], "value": [0.1, -0.3]}}
INTS = {"shape": [1, 3], "dtype": "int64", "values": [0, 1, 2]}
HEAD = {"golden_version": 1, "family": "f", "target": "onnx", "quantization": "fp32/int8",
        "recorded_with": "onnxruntime 1.20.1", "image": {"file": "golden.png", "width": 64, "height": 48}}
GOLDEN_VLM = {**HEAD, "task": "image_text_to_text", "stages": [
    {"name": "preprocess", "tensors": {"pixel_values": FLOATS}, "tolerance": {"max_abs": 1e-4}},
    {"name": "vision_encoder", "inputs_from": "preprocess", "tensors": {"image_embeds": FLOATS},
     "tolerance": {"max_abs_relative": 0.01}},
    {"name": "prompt", "prompt": "Describe.", "text": "<image>Describe.", "input_ids": [[1, 2, 3]],
     "attention_mask": [[1, 1, 1]], "position_ids": INTS, "rope_delta": 0},
    {"name": "text_decoder", "teacher_forced": True, "steps": [{"token_id": 5, "top_k": [[5, 3.5], [7, 2.0]]}],
     "tolerance": {"logit_max_abs_relative": 0.02, "near_tie_margin_relative": 0.01}},
    {"name": "generation", "max_new_tokens": 8, "token_ids": [5, 2], "text": "a cat", "stop_reason": "eos"}]}
GOLDEN_DUAL = {**HEAD, "task": "zero_shot_image_classification", "stages": [
    {"name": "preprocess", "tensors": {"pixel_values": FLOATS}, "tolerance": {"max_abs": 1e-4}},
    {"name": "image_encoder", "tensors": {"image_embeds": FLOATS}, "tolerance": {"max_abs_relative": 0.01}},
    {"name": "text", "labels": ["cat", "dog"], "prompts": ["a cat", "a dog"], "input_ids": [[1, 2], [1, 3]]},
    {"name": "text_encoder", "tensors": {"text_embeds": FLOATS, "input_ids": INTS}, "tolerance": {"max_abs": 1e-3}},
    {"name": "scores", "probabilities": [[0.75, 0.25]], "tolerance": {"max_abs": 1e-3}}]}
BASES = {"manifest": [MANIFEST_VLM, MANIFEST_DUAL], "golden": [GOLDEN_VLM, GOLDEN_DUAL]}
BUNDLES = sorted(Path.home().glob(".cache/pocketvlm/demo/bundles/*/manifest.json"))


def oracle(name: str) -> Any:
    return jsonschema.Draft202012Validator(load_schema(name))


def deep(n: int, leaf: Any = None, key: str | None = None) -> Any:
    node = leaf
    for _ in range(n):
        node = [node] if key is None else {key: node}
    return node


@pytest.mark.parametrize("name", ["manifest", "golden"])
def test_hand_written_instances_are_valid(name):
    for instance in BASES[name]:
        assert oracle(name).is_valid(instance), next(oracle(name).iter_errors(instance)).message
        assert schema_errors(instance, load_schema(name)) == []
        assert first_error(instance, load_schema(name)) is None


BENCH = {"schema_version": 1, "kind": "bundle_bench", "created_utc": "2025-01-01T00:00:00Z",
         "machine": {"platform": "linux", "cpu": "x86_64", "logical_cpus": 2}, "tools": {"onnxruntime": "1.20.1"},
         "threads": 2, "engine": "onnxruntime 1.20.1 CPUExecutionProvider",
         "bundle": {"path": "b", "family": "clip", "target": "onnx", "manifest_sha256": SHA,
                    "quantization": {"image_encoder": "fp32"}, "bytes": 10, "component_bytes": {"image_encoder": 10}},
         "figures": {"components": {"image_encoder": {"median_ms": 1.0, "p90_ms": 1.2, "min_ms": 0.9, "runs": 5}}},
         "peak_rss_bytes": 1000}
DEVICE = {"user_agent": "Mozilla/5.0", "backend": "wasm", "threads": None, "cross_origin_isolated": None,
          "memory_source": "unavailable"}


def test_bench_schema_judges_like_jsonschema():
    cases = {"host": (BENCH, True), "device": ({**BENCH, "measured_on": "device", "device": DEVICE,
                                               "peak_rss_bytes": None}, True),
             "host, null rss (else branch)": ({**BENCH, "peak_rss_bytes": None}, False),
             "host with a device block (not)": ({**BENCH, "device": DEVICE}, False),
             "device without its block (then)": ({**BENCH, "measured_on": "device"}, False)}
    for label, (instance, valid) in cases.items():
        assert oracle("bench").is_valid(instance) is valid, label
        assert (schema_errors(instance, load_schema("bench")) == []) is valid, label
    assert schema_errors({**BENCH, "device": DEVICE}, load_schema("bench")) == [
        "(root): matches the schema under 'not', which it must not"]
    assert schema_errors({}, load_schema("bench")) == [
        '(root): missing required properties "schema_version", "kind", "created_utc", "machine", "tools", '
        '"threads", "engine", "bundle", "figures", "peak_rss_bytes"']


@pytest.mark.parametrize("path", BUNDLES or [None], ids=lambda p: p.parent.name if p else "none")
def test_cached_demo_bundles_validate(path):
    if path is None:
        pytest.skip("no demo bundles under ~/.cache/pocketvlm/demo/bundles (the demo export creates them)")
    for name, file in (("manifest", path), ("golden", path.with_name("golden.json"))):
        instance = json.loads(file.read_text())
        assert schema_errors(instance, load_schema(name)) == [] and oracle(name).is_valid(instance)


def big_manifest(size: int = 50_000) -> dict:
    manifest = copy.deepcopy(MANIFEST_VLM)
    decoder = manifest["components"]["text_decoder"]
    while len(json.dumps(manifest, indent=1)) < size:
        layer = len(decoder["inputs"])
        decoder["inputs"] += [_tensor(f"past_key_{layer}"), _tensor(f"past_value_{layer}")]
        manifest["files"].append({"path": f"weights/part_{layer}.bin", "sha256": SHA, "bytes": layer})
    return manifest


def test_a_50kb_manifest_validates_well_under_50ms():
    manifest, schema = big_manifest(), load_schema("manifest")
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        assert schema_errors(manifest, schema) == []
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.05, timings


# -- the property test: mutated instances, judged like jsonschema judges them ------------------------------------
def schema_strings(node: Any) -> set:
    """Every string and number the schema mentions (property names, consts, enums), so mutations hit them."""
    found = set()
    if isinstance(node, dict):
        found |= {k for k in node if not k.startswith("$")}
        for value in node.values():
            found |= schema_strings(value)
    elif isinstance(node, list):
        for value in node:
            found |= schema_strings(value)
    elif isinstance(node, (str, int, float)) and not isinstance(node, bool):
        found.add(node)
    return found


ODD = ["..", "../x", "a/../b", "/etc/passwd", "C:\\x", "x\\y", "", " ", "0" * 64, "A" * 64, "ab" * 33,
       "2025-01-01T00:00:00Z", "\n", "golden.json\n", 0, -1, 1, 2, -0.0, 0.5, 1.0, 2.0, 1e-300, 2 ** 63, -(2 ** 63),
       10 ** 300, -(10 ** 300), 1e308, -1e308, float("inf"), float("-inf"), float("nan"), True, False, None]


def json_strategies(name: str) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    """(JSON values, object keys), both biased towards what the schema mentions."""
    known = sorted(schema_strings(load_schema(name)), key=repr)
    scalars = (st.sampled_from(ODD) | st.sampled_from(known) | st.none() | st.booleans()
               | st.integers(-(2 ** 70), 2 ** 70) | st.floats() | st.text(max_size=6))
    keys = st.sampled_from([k for k in known if isinstance(k, str)]) | st.text(max_size=4)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(keys, inner, max_size=3), max_leaves=6)
    return values, keys


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found += paths(value, prefix + (key,))
    return found


def nudges(value: Any) -> list:
    """Values next to `value` that JSON Schema tells apart: the other numeric types, neighbours, boundaries."""
    out: list = [0, -0.0, 0.0, 1, 1.0, -1, None, True, False, "", [], {}]
    if isinstance(value, bool):
        out += [int(value), float(value)]
    elif isinstance(value, (int, float)) and math.isfinite(value):
        out += [float(value), value + 1, value - 1, -value, value * 10 ** 300, value / 3, value + 1e-9]
        out += [int(value)] if float(value).is_integer() else []
    elif isinstance(value, str):
        out += [value + "x", value[:-1], "/" + value, "../" + value, value + "\n", value.upper(), value * 2]
    elif isinstance(value, list):
        out += [value + value[-1:], value[:-1], value[::-1], [value], value + [None]]
    return out


def dict_items(node: Any) -> list[tuple]:
    """Every (key, value) of every object in `node`: donors for grafting one instance's parts onto another."""
    found = list(node.items()) if isinstance(node, dict) else []
    for value in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
        found += dict_items(value)
    return found


def mutate(instance: Any, data: st.DataObject, name: str, values: st.SearchStrategy, keys: st.SearchStrategy) -> Any:
    every = paths(instance)  # half the time a shallow one, so top-level consts and types get hit too
    path = data.draw(st.sampled_from(every) | st.sampled_from([p for p in every if len(p) <= 2]))
    action = data.draw(st.sampled_from(["delete", "replace", "nudge", "nudge", "graft", "graft", "insert"]))
    if not path:
        return data.draw(values) if action == "replace" else instance
    parent = instance
    for key in path[:-1]:
        parent = parent[key]
    target = parent[path[-1]]
    if action == "delete":
        del parent[path[-1]]
    elif action == "replace":
        parent[path[-1]] = data.draw(values)
    elif action == "nudge":
        parent[path[-1]] = copy.deepcopy(data.draw(st.sampled_from(nudges(target))))
    elif action == "graft":
        key, value = data.draw(st.sampled_from([kv for base in BASES[name] for kv in dict_items(base)]))
        if isinstance(target, dict):
            target[key] = copy.deepcopy(value)
        else:
            parent[path[-1]] = copy.deepcopy(value)
    elif isinstance(target, dict):
        target[data.draw(keys)] = data.draw(values)
    elif isinstance(target, list):
        target.append(data.draw(values))
    return instance


@pytest.mark.parametrize("name", ["manifest", "golden"])
def test_mutations_are_judged_exactly_like_jsonschema(name):
    judge, schema, (values, keys) = oracle(name), load_schema(name), json_strategies(name)
    verdicts: collections.Counter = collections.Counter()

    @settings(derandomize=True, max_examples=300, deadline=None, database=None)
    @given(st.data())
    def check(data):
        instance = copy.deepcopy(data.draw(st.sampled_from(BASES[name])))
        for _ in range(data.draw(st.integers(1, 3))):
            instance = mutate(instance, data, name, values, keys)
        errors = schema_errors(instance, schema)
        assert all(isinstance(e, str) and "\n" not in e for e in errors)
        assert (errors == []) == judge.is_valid(instance), (errors, [e.message for e in judge.iter_errors(instance)])
        assert first_error(instance, schema) == (errors[0] if errors else None)
        verdicts[errors == []] += 1

    check()
    print(f"{name}: {sum(verdicts.values())} examples, {verdicts[True]} valid, {verdicts[False]} invalid")
    assert verdicts[True] >= 10 and verdicts[False] >= 10, verdicts  # both outcomes exercised


# -- each keyword on its edge cases, judged against jsonschema ----------------------------------------------------
NAN, INF = float("nan"), float("inf")
NUMBERS = [0, -0.0, 1, 1.0, 1.5, True, False, "1", None, [], {}, 10 ** 300, -(10 ** 300), 1e308, NAN, INF, -INF]
KEYWORD_CASES = [
    ({"type": "integer"}, NUMBERS),
    ({"type": "number"}, NUMBERS),
    ({"type": ["integer", "null"]}, NUMBERS),
    ({"type": ["string", "boolean"]}, NUMBERS),
    ({"type": "array"}, [[], {}, "[]", None, (1,)]),
    ({"type": "object"}, [{}, [], None, "x"]),
    ({"const": 1}, [1, 1.0, True, "1", [1], 2]),
    ({"const": False}, [False, 0, 0.0, None, []]),
    ({"const": None}, [None, 0, False, "", []]),
    ({"const": [1, {"a": True}]}, [[1, {"a": True}], [1.0, {"a": True}], [1, {"a": 1}], [1, {"a": True, "b": 1}],
                                   [True, {"a": True}], [1]]),
    ({"enum": [0, None, "x"]}, [0, 0.0, False, None, "x", "X", [0]]),
    ({"pattern": "_id$"}, ["eos_id", "_idx", "a_id\n", "", 5]),
    ({"pattern": "^[0-9a-f]{64}$"}, ["a" * 64, "a" * 64 + "\n", "A" * 64, "a" * 63, "٣" * 64]),
    ({"minLength": 2}, ["ab", "a", "é", "😀", "😀😀", 12, ["a", "b"]]),
    ({"minItems": 1, "maxItems": 2}, [[], [1], [1, 2], [1, 2, 3], "ab", {"a": 1}]),
    ({"minProperties": 1}, [{}, {"a": None}, [], [1]]),
    ({"minimum": 1}, [1, 0.999, 1.0, True, 10 ** 300, -INF, NAN, "2"]),
    ({"maximum": 1}, [1, 1.0000001, True, INF, NAN, None]),
    ({"exclusiveMinimum": 0}, [0, -0.0, 1e-300, -1e-300, NAN, INF, False]),
    ({"required": ["a", "b"]}, [{"a": 1, "b": 2}, {"a": 1}, {}, ["a", "b"], "ab"]),
    ({"properties": {"a": {"type": "string"}}}, [{"a": "x"}, {"a": 1}, {"b": 1}, {}, "a"]),
    ({"propertyNames": {"enum": ["a", "b"]}}, [{"a": 1}, {"c": 1}, {}, ["c"]]),
    ({"properties": {"a": {}}, "patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": False},
     [{"a": 1, "x1": 2}, {"x": "s"}, {"y": 1}, {}, {"ax": 1}, {"xa": 1.0}]),
    ({"patternProperties": {"_id$": {"type": ["integer", "null"]}}, "additionalProperties": {"type": "string"}},
     [{"a_id": 1, "b": "x"}, {"a_id": "x"}, {"b": 1}, {"_idx": 1}, {"a_id": None, "b": None}]),
    ({"items": {"type": "integer"}}, [[1, 2], [1, "a"], [], "ab", {"0": "a"}]),
    ({"prefixItems": [{"type": "integer"}, {"type": "number"}], "minItems": 2, "maxItems": 2},
     [[1, 2.5], [1.5, 2], [1], [1, 2, 3], ["a", 1]]),
    ({"prefixItems": [{"type": "integer"}], "items": {"type": "string"}}, [[1, "a", "b"], [1, 2], ["a"], [], [1]]),
    ({"items": False}, [[], [1], "x"]),
    ({"allOf": [{"type": "integer"}, {"minimum": 2}]}, [2, 1, 2.0, "2"]),
    ({"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}, [{"a": 1}, {"b": 1}, {"a": 1, "b": 2}, {}, 5]),
    ({"oneOf": [{"type": "null"}, {"type": "object", "required": ["h"]}]}, [None, {"h": 1}, {}, 0]),
    ({"not": {"required": ["device"]}}, [{}, {"device": 1}, [], "device"]),
    ({"if": {"required": ["a"]}, "then": {"required": ["b"]}, "else": {"required": ["c"]}},
     [{"a": 1, "b": 1}, {"a": 1}, {"c": 1}, {}, 7]),
    ({"if": {"properties": {"k": {"const": "x"}}}, "then": {"required": ["y"]}}, [{"k": "x"}, {"k": "z"}, {}]),
    ({"else": {"type": "string"}, "then": {"type": "integer"}}, [1, "a", None]),  # without "if": no effect
    ({"$defs": {"t": {"type": "integer", "minimum": 0}}, "items": {"$ref": "#/$defs/t"}}, [[0, 1], [-1], [1.5]]),
    ({"$defs": {"a/b~c": {"type": "null"}}, "$ref": "#/$defs/a~1b~0c"}, [None, 0]),
    ({"$defs": {"a b": {"type": "null"}}, "$ref": "#/$defs/a%20b"}, [None, 0]),
    ({"type": "array", "items": {"$ref": "#"}}, [[], [[]], [[[1]]], 1]),
    (True, [None, 1, {}]),
    (False, [None, 1, {}]),
]


@pytest.mark.parametrize(("schema", "instances"), KEYWORD_CASES, ids=lambda v: json.dumps(v)[:40] if isinstance(
    v, (dict, bool)) else None)
def test_each_keyword_on_edge_cases_agrees_with_jsonschema(schema, instances):
    judge = jsonschema.Draft202012Validator(schema)
    for instance in instances:
        assert (schema_errors(instance, schema) == []) == judge.is_valid(instance), (schema, instance)


# -- hostile input: the depth cap and odd values ---------------------------------------------------------------
def test_ten_thousand_deep_instances_hit_the_depth_cap_not_recursion_error():
    recursive = {"type": "array", "items": {"$ref": "#"}}
    errors = schema_errors(deep(10_000), recursive)
    assert len(errors) == 1 and errors[0].endswith(f"nested too deeply (more than {MAX_DEPTH} levels of subschemas)")
    assert errors[0].startswith("[0][0][0]")
    errors = schema_errors(deep(10_000, key="a"), {"additionalProperties": {"$ref": "#"}})
    assert len(errors) == 1 and errors[0].startswith("a.a.a.") and "nested too deeply" in errors[0]
    # shallow enough for jsonschema too: the same verdicts
    assert schema_errors(deep(10, leaf=1), recursive) == ["[0]" * 10 + ": expected array, got integer 1"]
    assert not jsonschema.Draft202012Validator(recursive).is_valid(deep(10, leaf=1))
    assert schema_errors(deep(10, leaf=[]), recursive) == []
    assert jsonschema.Draft202012Validator(recursive).is_valid(deep(10, leaf=[]))
    assert schema_errors(deep(10_000), {"const": [[1]]}) == ["(root): expected [[1]], got array of 1 items"]
    assert schema_errors(deep(10_000), {"enum": [[[None]], 1]}) == [
        "(root): expected one of [[null]], 1; got array of 1 items"]


@pytest.mark.parametrize("name", ["manifest", "golden", "bench"])
def test_odd_instances_never_raise(name):
    schema = load_schema(name)
    hostile = [deep(10_000), deep(10_000, key="components"), float("nan"), float("inf"), 10 ** 5000, "", None, True,
               [], {}, {"stages": deep(10_000)}, {1: 2}, object(), (1, 2), b"x"]
    for instance in hostile:
        errors = schema_errors(instance, schema)
        assert errors and all(isinstance(e, str) for e in errors)
    golden = copy.deepcopy(GOLDEN_VLM)
    golden["stages"][2]["input_ids"] = deep(10_000)  # "type": "array" only: valid
    assert schema_errors(golden, load_schema("golden")) == [] and oracle("golden").is_valid(golden)


def test_huge_numbers_are_judged_and_printed():
    manifest = copy.deepcopy(MANIFEST_VLM)
    manifest["files"][0]["bytes"] = 10 ** 5000
    assert schema_errors(manifest, load_schema("manifest")) == [] and oracle("manifest").is_valid(manifest)
    manifest["files"][0]["bytes"] = -(10 ** 5000)
    assert schema_errors(manifest, load_schema("manifest")) == ["files[0].bytes: expected >= 0, got integer "
                                                                "<integer of 16610 bits>"]


# -- construction: unknown keywords and malformed schemas are rejected -----------------------------------------
@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "object", "properties": {"a": {"maxLength": 3}}},
     "#/properties/a/maxLength: unsupported keyword 'maxLength'"),
    ({"requried": ["a"]}, "#/requried: unsupported keyword 'requried'"),
    ({"anyOf": [{"type": "string"}]}, "#/anyOf: unsupported keyword 'anyOf'"),
    ({"$ref": "#/$defs/missing"}, "#/$ref: $ref '#/$defs/missing' does not resolve"),
    ({"$ref": "other.json#/x"}, "#/$ref: only local JSON-pointer $refs"),
    ({"pattern": "("}, '#/pattern: invalid value "("'),
    ({"type": "integr"}, '#/type: invalid value "integr"'),
    ({"const": object()}, "#/const: invalid value <object>"),
    ({"minItems": -1}, "#/minItems: invalid value -1"),
    ({"items": 3}, "#/items: not a schema"),
    ({"oneOf": []}, "#/oneOf: invalid value array of 0 items"),
])
def test_unknown_keywords_and_bad_values_raise_at_construction(schema, message):
    with pytest.raises(SchemaError) as raised:
        Validator(schema)
    assert str(raised.value).startswith(message)
    with pytest.raises(SchemaError):
        schema_errors({}, schema)


def test_hostile_schemas_raise_schema_error_not_recursion_error():
    nested: dict = {"type": "array"}
    for _ in range(5_000):
        nested = {"items": nested}
    with pytest.raises(SchemaError, match="nested too deeply"):
        Validator(nested)
    with pytest.raises(SchemaError, match="#/const: invalid value"):
        Validator({"const": deep(5_000)})
    cyclic = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    assert schema_errors(1, cyclic) == [f"(root): nested too deeply (more than {MAX_DEPTH} levels of subschemas)"]


def test_annotations_are_ignored_and_every_real_schema_keyword_is_supported():
    assert Validator({"$schema": "x", "$id": "y", "title": "t", "description": "d", "$comment": "c"}).schema
    for name in ("manifest", "golden", "bench"):
        Validator(load_schema(name))  # raises SchemaError on any keyword this module does not implement


# -- messages name the path ------------------------------------------------------------------------------------
def test_error_messages_name_the_path():
    manifest, schema = copy.deepcopy(MANIFEST_VLM), load_schema("manifest")
    manifest["components"]["text_decoder"]["inputs"][0]["shape"] = ["batch", 1.5]
    del manifest["components"]["vision_encoder"]["opset"]
    manifest["files"][1]["path"] = "/abs/model.bin"
    manifest["files"][2]["bytes"] = True
    manifest["schema_version"] = 2
    manifest["preprocessing"]["image"]["kind"] = "nope"
    pattern = schema["properties"]["files"]["items"]["properties"]["path"]["pattern"]
    assert sorted(schema_errors(manifest, schema)) == sorted([
        "schema_version: expected 1, got integer 2",
        "components.text_decoder.inputs[0].shape[1]: expected integer or string, got number 1.5",
        'components.vision_encoder: missing required property "opset"',
        f'files[1].path: expected a string matching {json.dumps(pattern)}, got string "/abs/model.bin"',
        "files[2].bytes: expected integer, got boolean true",
        "preprocessing.image: matches none of the 2 oneOf alternatives "
        '(closest #1: preprocessing.image.kind: expected "idefics3", got string "nope")',
    ])
    assert first_error(manifest, schema) == "schema_version: expected 1, got integer 2"


def test_messages_for_odd_keys_refs_and_closed_objects():
    manifest, golden = copy.deepcopy(MANIFEST_DUAL), copy.deepcopy(GOLDEN_VLM)
    manifest["vision_split"]["bytes_per_image"]["224x224"]["float32"] = 0
    manifest["vision_split"]["interface"]["shape"][0] = None  # through "$ref": "#/$defs/tensor/properties/shape"
    manifest["components"]["decoder"] = manifest["components"].pop("text_encoder")
    golden["stages"][0]["tolerance"]["max_rel"] = 0.1
    golden["stages"][3]["steps"][0]["top_k"][1] = [7, "x"]
    assert schema_errors(manifest, load_schema("manifest")) == [
        'components.decoder: bad property name: expected one of "image_encoder", "text_encoder", "vision_encoder", '
        '"vision_frontend", "vision_transformer", "image_frontend", "image_transformer", "token_embedding", '
        '"text_decoder"; got string "decoder"',
        "vision_split.interface.shape[0]: expected integer or string, got null",
        'vision_split.bytes_per_image["224x224"].float32: expected >= 1, got integer 0',
    ]
    assert schema_errors(golden, load_schema("golden")) == [
        'stages[0].tolerance: unexpected property "max_rel"',
        'stages[3].steps[0].top_k[1][1]: expected number, got string "x"',
    ]
    assert schema_errors([], load_schema("golden")) == ["(root): expected object, got array of 0 items"]
    for broken in (manifest, golden):
        assert not oracle("manifest" if broken is manifest else "golden").is_valid(broken)
