"""The bundle and demo roots the serve tests run against (fixtures registered in conftest.py), and the raw
request helper."""


from __future__ import annotations

import hashlib
import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pocketvlm.cli import serve_cmd
from pocketvlm.runtime.manifest import load_bundle

ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}
SECRET = b"outside the served roots\n"
BUILD_FIX = "npm --prefix web-demo ci && npm --prefix web-demo run build"


# what the manifest schema requires of a dual-encoder bundle beyond its files (the runtime's load checks it)
SCHEMA_BLOCKS = {
    "golden": {"file": "golden.json", "image": "golden.png", "golden_version": 1,
               "stages": ["preprocess", "image_encoder", "text", "text_encoder", "scores"]},
    "tokenizer": {"file": "tokenizer.json", "max_length": 8, "padding": "longest", "pad_token_id": 0,
                  "padding_side": "right", "truncation": True},
    "special_tokens": {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "unk_token_id": 0},
    "zero_shot": {"activation": "softmax", "logit_scale": 10.0, "logit_bias": None, "prompt_template": "a {}.",
                  "embed_dim": 4, "normalize": "l2"},
    "preprocessing": {"image": {"convert_rgb": "alpha_composite_on_white", "resize": {"shortest_edge": 8},
                                "resample": "bicubic", "center_crop": {"height": 8, "width": 8},
                                "rescale_factor": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3, "layout": "NCHW"}},
}


def write_bundle(folder: Path, files: dict[str, bytes]) -> Path:
    """A bundle directory whose manifest lists ``files`` (the first is the image_encoder component)."""
    folder.mkdir()
    entries = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        entries.append({"path": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    first = entries[0]
    component = {"file": first["path"], "sha256": first["sha256"], "bytes": first["bytes"], "format": "onnx",
                 "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": [1, 3, 8, 8]}],
                 "outputs": [{"name": "image_embeds", "dtype": "float32", "shape": [1, 4]}],
                 "quantization": {"method": "fp32"}, "opset": 18}
    manifest = {"schema_version": 1, "family": "clip", "model_type": "clip", "target": "onnx",
                "task": "zero_shot_image_classification", "source": {"config_sha256": "0" * 64, "tools": {}},
                "components": {"image_encoder": component}, "files": entries, **SCHEMA_BLOCKS}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    """tmp/secret (what a traversal would reach), tmp/bundle (listed files, one unlisted, a symlink out, a
    dotfile) and tmp/demo (index.html, a .wasm, a .mjs, a folder, a dotfile, a symlink out)."""
    (tmp_path / "secret").write_bytes(SECRET)
    onnx = bytes(range(256)) * 1200  # 307,200 bytes: large enough for ranges
    bundle = write_bundle(tmp_path / "bundle", {"image_encoder.onnx": onnx, "tokenizer.json": b'{"model": {}}',
                                                "chat_template.jinja": b"{{ messages }}", "golden.json": b"{}"})
    (bundle / "unlisted.onnx").write_bytes(b"not in the manifest")
    (bundle / ".hidden").write_bytes(SECRET)
    (bundle / "link").symlink_to(tmp_path / "secret")
    demo = tmp_path / "demo"
    (demo / "assets").mkdir(parents=True)
    (demo / "index.html").write_text("<!doctype html><title>pocketvlm</title>")
    (demo / "assets" / "ort.wasm").write_bytes(b"\0asm\1\0\0\0" + bytes(64))
    (demo / "assets" / "main.mjs").write_text("export const x = 1;\n")
    (demo / ".env").write_bytes(SECRET)
    (demo / "out").symlink_to(tmp_path / "secret")
    return {"tmp": tmp_path, "bundle": bundle, "demo": demo}


@contextmanager
def running(server: serve_cmd.BoundedHTTPServer) -> Iterator[int]:
    """``server`` serving on a thread; its port. Shut down, closed and its thread joined on exit."""
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture
def port(roots: dict[str, Path]) -> Iterator[int]:
    """A server for the fixture bundle and demo on 127.0.0.1, a free port; stopped when the test ends."""
    with running(serve_cmd.make_server(load_bundle(roots["bundle"]), roots["demo"], "127.0.0.1", 0)) as bound:
        yield bound


def fetch(port: int, path: str, method: str = "GET",
          headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request, the path sent exactly as given (no client-side normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()
