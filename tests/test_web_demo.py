"""The web demo in a real browser: headless Chromium (Debian's) drives the served page through playwright-core
(``web-demo/scripts/runner.mjs``), and what the page computes on onnxruntime-web is compared with the Python
runtime on the same bundles. The engine's own unit tests (``npm --prefix web-demo test``, under Node) run here too.

Needs Chromium, Node and the built demo (``.ci/run`` installs them); without them the tests skip with the reason,
except under CI, where a missing piece fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from pocketvlm.runtime.dual_encoder import DualEncoder
from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.manifest import SCHEMA_PATH
from pocketvlm.runtime.vlm import VisionLanguageModel
from tests.tamper import altered_weights, rehash

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web-demo"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
MISSING = [what for what, ok in (("Chromium", CHROMIUM.exists()), ("node", shutil.which("node") is not None),
                                 ("web-demo/node_modules", (WEB / "node_modules").is_dir()),
                                 ("the built demo (web-demo/dist)", (WEB / "dist" / "index.html").is_file()))
           if not ok]
if MISSING and os.environ.get("CI"):
    raise RuntimeError(f"the browser tests need {', '.join(MISSING)}: .ci/run installs them")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (bash .ci/run installs them: "
                                                      "apt-get install chromium; npm --prefix web-demo ci && "
                                                      "npm --prefix web-demo run build)")
NEW_TOKENS = 8


def runner(command: str, bundle: Path, *args: str, images: tuple[Path, ...] = (),
           env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = ["node", str(WEB / "scripts" / "runner.mjs"), command, "--bundle", str(bundle), *args]
    for image in images:
        cmd += ["--image", str(image)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def lines(done: subprocess.CompletedProcess) -> list[dict]:
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def images(tmp_path_factory, photos) -> dict[str, Path]:
    """Two photos at sizes that exercise resizing: one square, one non-square (portrait)."""
    folder = tmp_path_factory.mktemp("web-images")
    out = {}
    for name, size in (("chelsea", (64, 64)), ("astronaut", (84, 140))):
        out[name] = folder / f"{name}-{size[0]}x{size[1]}.png"
        photos[name].convert("RGB").resize(size, Image.Resampling.BICUBIC).save(out[name])
    return out


def test_engine_unit_tests_pass_under_node(workspace, tmp_path: Path) -> None:
    # the engine's fixtures are the suite's own bundles (the same seeded checkpoints web-demo/scripts/
    # make_tiny_bundles.py builds), so they are exported once per run, not twice
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    for family, size in (("idefics3", "varied"), ("qwen2_vl", "varied"), ("clip", "tiny"), ("siglip", "tiny")):
        (fixtures / f"{family}-fp32").symlink_to(workspace.bundle(family, "fp32", size))
    done = subprocess.run(["npm", "--prefix", str(WEB), "test"], capture_output=True, text=True, timeout=1500,
                          cwd=ROOT, env={**os.environ, "POCKETVLM_WEB_FIXTURES": str(fixtures)})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "# fail 0" in done.stdout and "# pass " in done.stdout


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_page_gives_the_runtimes_greedy_tokens(workspace, images, family: str, tmp_path: Path) -> None:
    bundle = workspace.bundle(family, "fp32", "varied")
    model = VisionLanguageModel.load(bundle)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS)
    expected = [list(model.generate(str(path), config=config).token_ids) for path in images.values()]
    result = tmp_path / "result.json"
    got = lines(runner("caption", bundle, "--max-new-tokens", str(NEW_TOKENS), "--result", str(result),
                       images=tuple(images.values())))
    assert [line["token_ids"] for line in got] == expected
    assert all(line["backend"] == "wasm" and line["figures"]["image_encode_ms"] > 0 for line in got)
    # the result file: the bench schema, measured on a device, with what the page could observe
    schema = json.loads((SCHEMA_PATH.parent / "bench.schema.json").read_text())
    data = json.loads(result.read_text())
    jsonschema.validate(data, schema)
    assert data["measured_on"] == "device" and "Chrome" in data["device"]["user_agent"]
    assert data["device"]["cross_origin_isolated"] is True  # pocketvlm serve's COOP/COEP headers
    assert data["bundle"]["family"] == family


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_page_classifies_as_the_runtime(workspace, images, family: str) -> None:
    bundle = workspace.bundle(family, "fp32")
    labels = ["a cat", "an astronaut", "a rocket"]
    model = DualEncoder.load(bundle)
    paths = list(images.values())
    expected = model.probabilities(model.logits(model.embed_image([str(p) for p in paths]),
                                                model.embed_text(model.prompts(labels))))
    got = lines(runner("classify", bundle, "--labels", ",".join(labels), images=tuple(paths)))
    assert [line["labels"] for line in got] == [labels] * len(paths)
    np.testing.assert_allclose(np.asarray([line["probabilities"] for line in got]), expected, atol=1e-4)


def test_selftest_passes_and_names_the_stage_of_altered_weights(workspace, tmp_path: Path) -> None:
    bundle = workspace.bundle("idefics3", "fp32")
    good = lines(runner("selftest", bundle))[0]
    assert good["pass"] is True and good["failed_stage"] is None, good
    assert [s["name"] for s in good["stages"]] == json.loads((bundle / "manifest.json").read_text())["golden"]["stages"]
    bad_dir = altered_weights(bundle, tmp_path / "altered", "vision_encoder")
    done = runner("selftest", bad_dir)
    bad = lines(done)[0]
    assert done.returncode == 1 and bad["pass"] is False and bad["failed_stage"] == "vision_encoder", bad
    assert next(s for s in bad["stages"] if s["name"] == "preprocess")["pass"] is True


def test_bad_input_is_one_line_and_exit_2(workspace, images, tmp_path: Path) -> None:
    bundle = workspace.bundle("clip", "fp32")
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    tampered = shutil.copytree(bundle, tmp_path / "tampered")
    with open(tampered / "image_encoder.onnx", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02\x03")
    other_target = shutil.copytree(bundle, tmp_path / "tflite-like")
    manifest = json.loads((other_target / "manifest.json").read_text())
    manifest["target"] = "tflite"
    (other_target / "manifest.json").write_text(json.dumps(manifest))
    rehash(other_target)
    cases = {
        "not an image": runner("classify", bundle, "--labels", "a,b", images=(not_image,)),
        "does not match": runner("classify", tampered, "--labels", "a,b", images=(images["chelsea"],)),
        "tflite": runner("classify", other_target, "--labels", "a,b", images=(images["chelsea"],)),
        "no manifest.json": runner("classify", tmp_path, "--labels", "a,b", images=(images["chelsea"],)),
        "chromium": runner("selftest", bundle, env={"CHROMIUM": str(tmp_path / "no-such-browser")}, timeout=60),
    }
    for needle, done in cases.items():
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2, (needle, done.returncode, done.stderr[-2000:])
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0].lower(), (needle, err)
        assert "Traceback" not in done.stderr and not done.stdout.strip()
