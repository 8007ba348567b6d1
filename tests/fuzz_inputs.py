"""Hypothesis strategies for hostile inputs: mutated manifests and golden records, image bytes, text, templates.

Every strategy is a pure function of hypothesis's draws, so a failing example shrinks and replays. The property the
tests check over all of them: only pocketvlm's typed errors (one line), never another exception, never a hang.
"""

from __future__ import annotations

import copy
import io
import os
import struct
import zlib
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

# Examples per property: small in CI; `pytest --fuzz-examples N` (or $POCKETVLM_FUZZ_EXAMPLES) for long runs, which
# also stop derandomizing so that each long run explores new inputs.
LONG = int(os.environ.get("POCKETVLM_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=LONG or examples, derandomize=not LONG, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# --- JSON mutations ---------------------------------------------------------------------------------------------------

HOSTILE_STRINGS = ["", "..", "../manifest.json", "/etc/passwd", "a/../../b", "C:\\\\x", "\0", "\ud800", "onnx",
                   "x" * 5000, "manifest.json", "tokenizer.json", "golden.json", "fp32", "int4", "qnn_context"]
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.sampled_from([0, 1, -1, 2**31, 10**12, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(HOSTILE_STRINGS), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a JSON value, the root excluded."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


def _parent(document: Any, path: tuple) -> Any:
    for key in path[:-1]:
        document = document[key]
    return document


@st.composite
def mutated(draw: st.DrawFn, document: Any, max_edits: int = 3) -> tuple[Any, list[str]]:
    """``document`` with 1..max_edits edits: a key deleted, a value replaced (any JSON, or a number nudged), a list
    emptied or extended, an unknown key added. Returns the copy and the edits, for the failure report."""
    doc, edits = copy.deepcopy(document), []
    for _ in range(draw(st.integers(1, max_edits))):
        where = paths(doc)
        if not where:
            break
        path = draw(st.sampled_from(where))
        parent, key = _parent(doc, path), path[-1]
        old = parent[key]
        action = draw(st.sampled_from(["delete", "replace", "nudge", "grow", "add"]))
        if action == "delete":
            del parent[key]
        elif action == "nudge" and isinstance(old, int | float) and not isinstance(old, bool):
            parent[key] = draw(st.sampled_from([0, -1, 1, old + 1, old - 1, old * 1000, 2**40, old / 3]))
        elif action == "grow" and isinstance(old, list):
            parent[key] = old + [draw(json_values)] if draw(st.booleans()) else []
        elif action == "add" and isinstance(old, dict):
            old[draw(st.sampled_from(["bogus", "text_decoder", "vision_encoder", "image_encoder", "../x"]))] = \
                draw(json_values)
        else:
            parent[key] = draw(json_values)
        edits.append(f"{action} {'.'.join(map(str, path))}")
    return doc, edits


# --- image bytes ------------------------------------------------------------------------------------------------------

MODES = ["RGB", "L", "1", "P", "LA", "PA", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr", "RGBa", "La", "LAB", "HSV"]
FORMATS = {"PNG": ("RGB", "L", "1", "P", "LA", "RGBA", "I;16"), "JPEG": ("RGB", "L", "CMYK"),
           "GIF": ("P", "L"), "WEBP": ("RGB", "RGBA"), "BMP": ("RGB", "L", "P", "1"),
           "TIFF": ("RGB", "L", "CMYK", "I;16", "F", "LAB", "YCbCr", "RGBA", "I")}


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (valid CRC) claims width x height, with one tiny IDAT: a decompression-bomb shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A JPEG whose SOF0 claims width x height (JPEG's maximum is 65,535 per side)."""
    base = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 99, 199)).save(base, "JPEG")
    data = base.getvalue()
    at = data.index(b"\xff\xc0") + 5  # marker, length (2), precision (1), then height, width
    return data[:at] + struct.pack(">HH", height, width) + data[at + 4:]


def gif_claiming(width: int, height: int) -> bytes:
    base = io.BytesIO()
    Image.new("P", (4, 4)).save(base, "GIF")
    data = bytearray(base.getvalue())
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen; the frame stays 4 x 4
    return bytes(data)


@st.composite
def pictures(draw: st.DrawFn, modes: tuple[str, ...] = tuple(MODES)) -> Image.Image:
    """Noise in one of ``modes``, 1..96 pixels a side."""
    mode = draw(st.sampled_from(modes))
    width, height = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    noise = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    if mode == "I;16":
        return Image.fromarray(noise[..., 0].astype(np.uint16) * 257)
    if mode in ("RGBa", "La"):
        return image.convert("RGBA" if mode == "RGBa" else "LA").convert(mode)
    return image.convert(mode)


@st.composite
def encoded(draw: st.DrawFn) -> bytes:
    """A real file of a random format and mode, maybe animated, maybe with an EXIF orientation."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    image = draw(pictures(FORMATS[fmt]))
    out, options = io.BytesIO(), {}
    if fmt in ("JPEG", "WEBP", "PNG", "TIFF") and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 9))  # orientations 1-8, and two that do not exist
        options["exif"] = exif.tobytes()
    if fmt in ("GIF", "PNG", "WEBP") and draw(st.booleans()):
        frames = [image.copy() for _ in range(draw(st.integers(1, 3)))]
        options.update(save_all=True, append_images=frames, duration=50)
    image.save(out, fmt, **options)
    return out.getvalue()


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """Valid files, and files broken every way a download or a hostile site breaks them."""
    kind = draw(st.sampled_from(["valid", "truncated", "flipped", "claims", "magic", "noise"]))
    if kind == "claims":
        maker = draw(st.sampled_from([png_claiming, jpeg_claiming, gif_claiming]))
        side = 65_535 if maker is not png_claiming else 100_000
        width, height = draw(st.sampled_from([(side, side), (side, 1), (1, side), (0, 5), (5, 0)]))
        return maker(width, height)
    if kind == "magic":
        magic = draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\0\0\0\0WEBP",
                                      b"BM", b"II*\0", b"MM\0*"]))
        return magic + draw(st.binary(max_size=256))
    if kind == "noise":
        return draw(st.binary(max_size=512))
    data = draw(encoded())
    if kind == "truncated":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "flipped":
        buffer = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            buffer[draw(st.integers(0, len(buffer) - 1))] = draw(st.integers(0, 255))
        return bytes(buffer)
    return data


# --- text and templates -----------------------------------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=200)  # surrogates and control characters too
long_text = st.integers(2_000, 60_000).map(lambda n: ("ab c\u00e9\u4e2d\U0001f600 " * n)[:n * 3])
prompts = st.one_of(any_text, long_text, st.sampled_from(["", " ", "\n\t", "\0", "\ud83d", "<image>", "<|im_end|>"]))

TEMPLATE_PIECES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ messages.__class__ }}", "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}", "{{ self._TemplateReference__context }}", "{{ messages|attr('__dict__') }}",
    "{% for i in range(10**9) %}x{% endfor %}", "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}"
    "{% endfor %}", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "{{ 'x' * 10**9 }}", "{{ [1] * 10**9 }}",
    "{{ 'x'.ljust(10**9) }}", "{{ 9 ** 9 ** 9 }}", "{{ '%999999999s'|format(1) }}", "{{ '{:>999999999}'.format(1) }}",
    "{{ 'ab'.ljust(900000).replace('a', 'aaaaaaaaaa') }}", "{{ ('x\n' * 9999)|indent(99999) }}",
    "{{ raise_exception('no') }}", "{{ messages[0]['content'][7] }}", "{{ 1 / 0 }}", "{{ undefined_name.attr }}",
    "{% for m in messages %}{{ m.content.append(1) }}{% endfor %}", "{% set x = messages.pop() %}", "{% if %}",
    "{% for %}", "{{", "}}", "{% endfor %}", "{% raw %}", "{# open comment", "{{ messages | tojson }}",
    "{% for m in messages %}{{ m['role'] }}{% for c in m['content'] %}{{ c['type'] }}{% endfor %}{% endfor %}",
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "plain text", "<image>", "\0", "\ud800",
]
templates = st.lists(st.sampled_from(TEMPLATE_PIECES) | any_text, min_size=1, max_size=4).map("".join)
