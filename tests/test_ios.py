"""ios-demo/: what can be checked of the iOS app on a machine with no Swift toolchain and no Apple SDK.

Every Swift file is parsed with a real Swift grammar (tree-sitter-swift), and an injected syntax error must fail that
check. The fields the Swift code reads from ``manifest.json`` and ``golden.json`` are found from its sources
(``tests/swift_reads.py``) and must exist in the schemas and in a Core ML bundle of every VLM family. Nothing here
compiles or runs the app: the README says so.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from pocketvlm.export.loop import export_bundles
from pocketvlm.export.quant.config import QuantConfig
from pocketvlm.export.static_shapes import StaticShapes
from tests.cases import VLM_FAMILIES
from tests.swift_reads import in_schema, matching, missing, scan, syntax_errors
from tests.test_coreml import coreml_vlm

ROOT = Path(__file__).resolve().parents[1]
IOS = ROOT / "ios-demo"
KIT = IOS / "Sources" / "PocketVLMKit"
KOTLIN = ROOT / "android-demo" / "engine" / "src" / "main" / "kotlin" / "dev" / "pocketvlm" / "engine"
SCHEMAS = {doc: json.loads((ROOT / "runtime" / "schema" / f"{doc}.schema.json").read_text())
           for doc in ("manifest", "golden")}
# Android engine files with no iOS counterpart, and why: iOS runs Core ML VLM bundles only
ANDROID_ONLY = {"ZeroShot": "dual encoders are not run by the iOS captioning demo",
                "Decoders": "ONNX / LiteRT / QNN decoders: iOS has StatefulDecoder over MLState instead"}
IOS_ONLY = {"CoreMLSession": "the Core ML backend (Android's are backend-ort/-litert)",
            "StatefulDecoder": "the decoder over MLState (Kotlin's StaticKvDecoder in Decoders.kt)"}


def swift_files() -> list[Path]:
    return sorted(p for p in IOS.rglob("*.swift") if ".build" not in p.parts)


def test_every_swift_file_parses_and_stays_under_600_lines():
    files = swift_files()
    assert len(files) >= 25, [str(p) for p in files]  # the kit (~23 files) and the app
    problems = []
    for path in files:
        source = path.read_bytes()
        problems += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in syntax_errors(source)]
        lines = source.count(b"\n")
        if lines > 600:
            problems.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not problems, "\n".join(problems)


CODE_LINE = re.compile(r"^( {8,})(?![/*])\S.*\)$", re.M)  # a statement inside a body that ends in a call


def _at_code_line(edit):
    """An edit of the first statement line in a body that ends in a call (never a comment)."""
    def inject(source: str) -> str:
        m = CODE_LINE.search(source)
        assert m, "no statement line to break"
        return source[: m.start()] + edit(m.group(0), m.group(1)) + source[m.end():]
    return inject


INJECTIONS = {
    "a closing brace removed": lambda s: s[: s.rindex("}")] + s[s.rindex("}") + 1:],
    "a let without a name": _at_code_line(lambda line, indent: f"{indent}let = 1\n{line}"),
    "an unclosed call": _at_code_line(lambda line, indent: line[:-1]),
    "a doubled operator": _at_code_line(lambda line, indent: f"{indent}_ = = 1\n{line}"),
    "a type annotation without a type": _at_code_line(lambda line, indent: f"{indent}let x: = 1\n{line}"),
    "two values in a row": _at_code_line(lambda line, indent: f"{indent}let x = 1 1\n{line}"),
}


@pytest.mark.parametrize("injection", INJECTIONS)
def test_an_injected_syntax_error_fails_the_check(injection):
    """The check is not blind: the kit's decoder and manifest code, each broken one way, give syntax errors."""
    for name in ("StatefulDecoder.swift", "Manifest.swift", "Generation.swift"):
        source = (KIT / name).read_text()
        assert not syntax_errors(source.encode()), name
        broken = INJECTIONS[injection](source)
        assert broken != source
        assert syntax_errors(broken.encode()), (name, injection)


def test_the_kit_mirrors_the_android_engine_file_by_file():
    kotlin = {p.stem.lower(): p.stem for p in KOTLIN.glob("*.kt")}
    swift = {p.stem.lower(): p.stem for p in KIT.glob("*.swift")}
    kotlin, swift = ({names[k] for k in names if k not in other} for names, other in ((kotlin, swift), (swift, kotlin)))
    assert kotlin - swift == set(ANDROID_ONLY), kotlin - swift
    assert swift - kotlin == set(IOS_ONLY), swift - kotlin


@pytest.fixture(scope="module")
def reads():
    result = scan(swift_files(), ROOT)
    assert not result.problems, "\n".join(result.problems)
    return result


def test_every_json_read_follows_the_convention_the_checker_reads(reads):
    """No unannotated reader, no read the checker cannot trace; and it finds the reads the app cannot do without."""
    paths = {(r.doc, r.path) for r in reads.reads}
    for expected in [("manifest", "components.text_decoder.static.kv_capacity"), ("manifest", "app.prompt"),
                     ("manifest", "files[].sha256"), ("manifest", "decoder.num_layers"),
                     ("golden", "stages[].name")]:
        assert any(doc == expected[0] and (path == expected[1] or path.startswith(expected[1] + ".")
                                           or _wild(path) == _wild(expected[1])) for doc, path in paths), expected
    assert len([r for r in reads.reads if r.doc == "manifest"]) >= 60
    assert len([r for r in reads.reads if r.doc == "golden"]) >= 20


def _wild(path: str) -> str:
    return re.sub(r"components\.\w+", "components.*", path)


SAMPLE = """
struct Sample {
    // json: manifest:decoder
    init(_ node: JSONNode) throws {
        let layers = try node["num_layers"].int()
        let heads = try node["no_such_field"].int()
        let table = [String: Int]()
        let other = table["kv_heads"]
    }
    init(raw: JSONNode) throws { _ = try raw["x"].int() }
}
"""


def test_the_read_checker_fails_when_it_should(tmp_path):
    """An unannotated reader and an untraceable subscript are problems; a misspelt field is not in the schema and
    not in a bundle."""
    (tmp_path / "Sample.swift").write_text(SAMPLE)
    result = scan([tmp_path / "Sample.swift"], tmp_path)
    assert any("no '// json: ...' line" in p for p in result.problems), result.problems
    assert any("table[\"kv_heads\"]" in p for p in result.problems), result.problems
    by_path = {r.path: r for r in result.reads}
    assert set(by_path) == {"decoder.num_layers", "decoder.no_such_field"}
    schema = SCHEMAS["manifest"]
    assert in_schema(schema, by_path["decoder.num_layers"].base + by_path["decoder.num_layers"].steps)
    assert not in_schema(schema, by_path["decoder.no_such_field"].base + by_path["decoder.no_such_field"].steps)
    manifest = {"decoder": {"num_layers": 2}}
    (at, node), = matching(manifest, by_path["decoder.num_layers"].base, None)
    assert missing(node, by_path["decoder.num_layers"].steps, at) == []
    assert missing(node, by_path["decoder.no_such_field"].steps, at) == ["decoder.no_such_field"]


def test_every_field_the_swift_code_reads_is_in_the_schema(reads):
    absent = sorted({f"{r.doc}: {r.path} ({r.at})" for r in reads.reads
                     if r.doc in SCHEMAS and not in_schema(SCHEMAS[r.doc], r.base + r.steps)})
    assert not absent, "\n".join(absent)


@pytest.fixture(scope="module")
def coreml_bundles(workspace, tmp_path_factory) -> dict[str, Path]:
    """A tiny Core ML bundle of every VLM family with the app block the iPhone app needs: Qwen bundles get one from
    their fixed image size; the Idefics3 checkpoint is re-saved without image splitting (as the embedded captioner)."""
    out = {}
    for family in VLM_FAMILIES:
        if family != "idefics3":
            out[family] = coreml_vlm(workspace, family)
            continue
        ckpt = tmp_path_factory.mktemp("ios") / "idefics3-nosplit"
        shutil.copytree(workspace.checkpoint(family, "fp16"), ckpt)
        config = json.loads((ckpt / "preprocessor_config.json").read_text())
        config["do_image_splitting"] = False
        (ckpt / "preprocessor_config.json").write_text(json.dumps(config))
        (bundle,) = export_bundles(ckpt, [(ckpt.parent / "bundle", QuantConfig.parse("fp16"))], target="coreml",
                                   isolate=False, shapes=StaticShapes(prefill_length=16, kv_capacity=256,
                                                                      image_size=112))
        out[family] = bundle
    for family, path in out.items():
        assert "app" in json.loads((path / "manifest.json").read_text()), family
    return out


def test_every_field_the_swift_code_reads_is_in_a_coreml_bundle_of_every_vlm_family(reads, coreml_bundles):
    docs = {family: {"manifest": json.loads((path / "manifest.json").read_text()),
                     "golden": json.loads((path / "golden.json").read_text())}
            for family, path in coreml_bundles.items()}
    problems = []
    for reader in reads.readers:
        if reader.doc not in SCHEMAS:
            continue
        nodes = {family: matching(doc[reader.doc], reader.base, reader.where) for family, doc in docs.items()}
        if not any(nodes.values()):
            problems.append(f"{reader.at}: no {reader.doc} of any family has a node where this reader reads")
        for read in reader.reads:
            for family, found in nodes.items():
                for at, node in found:
                    problems += [f"{read.at}: {family} {read.doc} has no '{m}'" for m in missing(node, read.steps, at)]
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_readme_names_versions_and_one_export_command_the_cli_accepts():
    from pocketvlm.cli.main import build_parser

    readme = (IOS / "README.md").read_text()
    assert re.search(r"Xcode \d+(\.\d+)+", readme) and re.search(r"iOS 18", readme)
    assert "not compiled" in readme.lower() or "not built" in readme.lower()
    commands = [line.strip().lstrip("$ ") for line in readme.splitlines()
                if line.strip().lstrip("$ ").startswith("pocketvlm export")]
    assert len({c for c in commands if "--target coreml" in c}) == 1, commands
    (command,) = {c for c in commands if "--target coreml" in c}
    args = build_parser().parse_args(shlex.split(command.split("#")[0])[1:])
    assert args.target == "coreml"
