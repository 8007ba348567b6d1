"""Fuzzing the runtime's inputs with hypothesis: manifests, golden records, image bytes, text and chat templates.

One property throughout: whatever arrives, the runtime answers or raises one of pocketvlm's typed errors with a
one-line message (the CLI's exit 2), never another exception, never a hang. Seeded and bounded in CI; longer runs
with ``POCKETVLM_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py`` (not derandomized: new inputs each run).
Bundles are the tiny exports of the suite's workspace, cloned with hard links (every file a test rewrites is
unlinked first, so the shared bundles are never touched).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pocketvlm.cli.main import main
from pocketvlm.runtime.dual_encoder import DualEncoder
from pocketvlm.runtime.errors import PocketVLMError
from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.image import ImagePreprocess, load_image
from pocketvlm.runtime.manifest import sha256_file
from pocketvlm.runtime.selftest import selftest
from pocketvlm.runtime.template import ChatTemplate
from pocketvlm.runtime.vlm import VisionLanguageModel
from tests import fuzz_inputs as fz

HANG_S = 20.0  # no single example may take this long (a render, a load, a two-token caption of a tiny model)
TINY_VLM = "qwen2_vl"
TWO_TOKENS = GenerationConfig(max_new_tokens=2)


def clone(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` whose files are hard links (the manifest is a real copy)."""
    for source in bundle.rglob("*"):
        target = out / source.relative_to(bundle)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.name == "manifest.json":
            shutil.copyfile(source, target)
        else:
            os.link(source, target)
    return out


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` without touching the hard-linked original."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def rehash_one(bundle: Path, relative: str) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == relative:
            entry["sha256"], entry["bytes"] = sha256_file(bundle / relative), (bundle / relative).stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def typed_or_ok(action: Callable[[], Any], context: object) -> str:
    """Run ``action``; "ok" or the typed error's one line. Anything else fails the test with the input shown."""
    started = time.perf_counter()
    try:
        action()
        outcome = "ok"
    except PocketVLMError as exc:
        outcome = exc.one_line()
        assert "\n" not in outcome and outcome.strip(), f"not one line for {context!r}: {outcome!r}"
    elapsed = time.perf_counter() - started
    assert elapsed < HANG_S, f"{elapsed:.1f} s for {context!r}"
    return outcome


def cli_one_line(argv: list[str]) -> tuple[int, str]:
    """``pocketvlm <argv>`` in this process: its exit code and stderr, which must be empty or one error line."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert code in (0, 1, 2), (argv, code)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err.getvalue())
    return code, err.getvalue()


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pic") / "shape.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def vlm_bundle(workspace: Any) -> Path:
    return workspace.bundle(TINY_VLM, "fp32")


@pytest.fixture(scope="module")
def clip_bundle(workspace: Any) -> Path:
    return workspace.bundle("clip", "fp32")


@pytest.fixture(scope="module")
def vlm(vlm_bundle: Path) -> VisionLanguageModel:
    return VisionLanguageModel.load(vlm_bundle)


@pytest.fixture(scope="module")
def dual(clip_bundle: Path) -> DualEncoder:
    return DualEncoder.load(clip_bundle)


@contextlib.contextmanager
def cloned(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("clone")
    try:
        yield clone(bundle, root / "b")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- manifests and golden records ------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["clip", "vlm"])
def test_mutated_manifests_give_typed_errors(which: str, clip_bundle: Path, vlm_bundle: Path, picture: Path,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    source = clip_bundle if which == "clip" else vlm_bundle
    original = json.loads((source / "manifest.json").read_text())
    seen: dict[str, int] = {}

    def use(path: Path) -> None:  # through the CLI: exit 0, or 2 with one line (any other exception fails)
        task = ["classify", "--labels", "a red circle,a blue square"] if which == "clip" else \
            ["caption", "--max-new-tokens", "2"]
        code, err = cli_one_line([task[0], "--bundle", str(path), "--image", str(picture), *task[1:]])
        if code == 2:
            raise PocketVLMError(err.strip().removeprefix("error: "), "")
        assert code == 0, err

    with cloned(source, tmp_path_factory) as bundle:
        @fz.fuzz_settings(60)
        @given(fz.mutated(original))
        def check(case: tuple[dict, list[str]]) -> None:
            manifest, edits = case
            (bundle / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
            outcome = typed_or_ok(lambda: use(bundle), edits)
            key = outcome.split(" (fix")[0].split(":")[-1][:60]
            seen[key] = seen.get(key, 0) + 1

        check()
    assert len(seen) > 3, seen  # the mutations reached several different checks, not one early exit


@pytest.mark.parametrize("which", ["clip", "vlm"])
def test_mutated_golden_records_give_typed_errors(which: str, clip_bundle: Path, vlm_bundle: Path,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """The record is read at each replay; the model is loaded (and every sha256 checked) once, before."""
    with cloned(clip_bundle if which == "clip" else vlm_bundle, tmp_path_factory) as bundle:
        model = (DualEncoder if which == "clip" else VisionLanguageModel).load(bundle)
        relative = model.bundle.manifest["golden"]["file"]
        original = json.loads((bundle / relative).read_text())

        @fz.fuzz_settings(60)
        @given(fz.mutated(original))
        def check(case: tuple[dict, list[str]]) -> None:
            record, edits = case
            replace_file(bundle / relative, json.dumps(record).encode())
            typed_or_ok(lambda: selftest(model), edits)

        check()


# --- images -----------------------------------------------------------------------------------------------------------

CLIP_LIKE = ImagePreprocess.from_json({"resize": {"shortest_edge": 32}, "resample": "bicubic",
                                       "center_crop": {"height": 32, "width": 32}, "rescale_factor": 1 / 255,
                                       "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})


@fz.fuzz_settings(300)
@given(fz.image_bytes())
def test_image_bytes_decode_or_give_typed_errors(data: bytes) -> None:
    def decode() -> None:
        image = load_image(data, max_pixels=4_000_000)
        assert image.width * image.height <= 4_000_000
        pixels = CLIP_LIKE(image)
        assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32 and np.isfinite(pixels).all()

    typed_or_ok(decode, data[:64])


@fz.fuzz_settings(40)
@given(data=fz.image_bytes(), which=st.sampled_from(["vlm", "clip"]))
def test_images_through_the_models(data: bytes, which: str, vlm: VisionLanguageModel, dual: DualEncoder) -> None:
    """The families' own preprocessing (Qwen's smart resize, tiling, crops) on whatever decodes."""
    if which == "vlm":
        typed_or_ok(lambda: vlm.generate(data, "Describe.", TWO_TOKENS), data[:64])
    else:
        typed_or_ok(lambda: dual.embed_image([data]), data[:64])


@pytest.mark.parametrize(("width", "height"), [(1, 1), (1, 900), (900, 1), (3, 2000), (2000, 3)])
def test_extreme_aspect_ratios(width: int, height: int, vlm: VisionLanguageModel, dual: DualEncoder) -> None:
    image = Image.new("RGB", (width, height), (10, 200, 30))
    typed_or_ok(lambda: vlm.generate(image, "Describe.", TWO_TOKENS), (width, height))
    typed_or_ok(lambda: dual.embed_image([image]), (width, height))


# --- text -------------------------------------------------------------------------------------------------------------

@fz.fuzz_settings(80)
@given(text=fz.prompts)
def test_any_prompt_text(text: str, vlm: VisionLanguageModel, dual: DualEncoder, picture: Path) -> None:
    typed_or_ok(lambda: vlm.generate(picture, text, TWO_TOKENS), text[:80])
    typed_or_ok(lambda: vlm.generate(None, text, TWO_TOKENS), text[:80])
    typed_or_ok(lambda: dual.embed_text([text]), text[:80])
    typed_or_ok(lambda: dual.classify([picture], [text, "a square"]), text[:80])


def test_undecodable_command_line_bytes_exit_2(vlm_bundle: Path, clip_bundle: Path, picture: Path) -> None:
    """Bytes that are not UTF-8 on the command line reach Python as lone surrogates (surrogateescape)."""
    question = os.fsdecode(b"what \xff\xfe shape?")
    code, err = cli_one_line(["ask", "--bundle", str(vlm_bundle), "--image", str(picture), "--question", question])
    assert code == 2 and "not valid Unicode" in err
    code, err = cli_one_line(["classify", "--bundle", str(clip_bundle), "--image", str(picture), "--labels",
                              os.fsdecode(b"r\xe9d,blue")])
    assert code == 2 and "not valid Unicode" in err


# --- chat templates ---------------------------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape?"}]}]


@fz.fuzz_settings(150)
@given(fz.templates)
def test_tampered_chat_templates_fail_safely_and_fast(source: str) -> None:
    def render() -> None:
        text = ChatTemplate(source).render(messages=MESSAGES, add_generation_prompt=True)
        assert isinstance(text, str)

    typed_or_ok(render, source[:120])


def test_a_tampered_template_in_a_bundle_exits_2(vlm_bundle: Path, picture: Path,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    with cloned(vlm_bundle, tmp_path_factory) as bundle:
        relative = json.loads((bundle / "manifest.json").read_text())["chat_template"]
        for source, expected in [("{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}",
                                  "was stopped"), ("{{ ''.__class__.__mro__ }}", "unsafe"),
                                 ("{% for m in messages %}", "does not compile"),
                                 ("\ud800{{ messages }}", "not UTF-8")]:
            replace_file(bundle / relative, source.encode("utf-8", "surrogatepass"))
            rehash_one(bundle, relative)
            started = time.perf_counter()
            code, err = cli_one_line(["caption", "--bundle", str(bundle), "--image", str(picture)])
            assert code == 2 and expected in err, (source, err)
            assert time.perf_counter() - started < HANG_S


# --- memory -----------------------------------------------------------------------------------------------------------

BOMBS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))
from pocketvlm.runtime.errors import PocketVLMError
from pocketvlm.runtime.image import load_image
from pocketvlm.runtime.template import ChatTemplate
from tests import fuzz_inputs as fz
cases = [("image", fz.png_claiming(100_000, 100_000)), ("image", fz.jpeg_claiming(65_535, 65_535)),
         ("image", fz.gif_claiming(65_535, 65_535)), ("image", fz.png_claiming(30_000, 30_000))]
cases += [("template", piece) for piece in fz.TEMPLATE_PIECES]
typed = 0
for kind, case in cases:
    try:
        load_image(case) if kind == "image" else ChatTemplate(case).render(messages=[], add_generation_prompt=True)
    except PocketVLMError:
        typed += 1
with open("/proc/self/status") as status:  # VmHWM starts at exec (ru_maxrss would carry pytest's, from the fork)
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
print(typed, len(cases), peak_kb // 1024)
"""


def test_bombs_stay_within_a_memory_cap() -> None:
    """Decompression bombs and template bombs under a 1 GiB address-space cap (a process of its own): each is
    refused before it allocates; a MemoryError or a traceback would fail the test."""
    limit = 1 << 30
    done = subprocess.run([sys.executable, "-c", BOMBS.replace("CAP_BYTES", str(limit))], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    typed, total, peak_mb = map(int, done.stdout.split())
    assert typed >= 4 + 12 and total == 4 + len(fz.TEMPLATE_PIECES), done.stdout
    print(f"bombs: {typed} of {total} refused with a typed error, peak RSS {peak_mb} MB under a 1 GiB cap")
    assert peak_mb < 400, f"peak RSS {peak_mb} MB"
