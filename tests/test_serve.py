"""``pocketvlm serve``: the web demo and a bundle over HTTP, cross-origin isolated, allow-listed files only.

The bundle is built by hand (a manifest the runtime's ``load_bundle`` accepts, over a few random files): the server
only reads the manifest's file list, so no export is needed. All traffic goes to 127.0.0.1 with bounded timeouts,
and every server is stopped at the end of its test.
"""

from __future__ import annotations

import http.client
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pocketvlm.cli import serve_cmd
from pocketvlm.cli.main import main
from pocketvlm.runtime.manifest import load_bundle
from tests.serve_fixtures import BUILD_FIX, ISOLATION, SECRET, fetch, write_bundle


@pytest.mark.parametrize(("path", "mime"), [
    ("/", "text/html; charset=utf-8"),
    ("/index.html", "text/html; charset=utf-8"),
    ("/assets/ort.wasm", "application/wasm"),
    ("/assets/main.mjs", "text/javascript; charset=utf-8"),
    ("/bundle/manifest.json", "application/json"),
    ("/bundle/image_encoder.onnx", "application/octet-stream"),
    ("/bundle/chat_template.jinja", "text/plain; charset=utf-8"),
    ("/bundle/golden.json", "application/json"),
])
def test_isolation_headers_and_mime_types(port, path, mime):
    status, headers, body = fetch(port, path)
    assert status == 200 and body
    assert {name: headers[name] for name in ISOLATION} == ISOLATION
    assert headers["Content-Type"] == mime and int(headers["Content-Length"]) == len(body)
    assert (headers["Cache-Control"] == "no-cache") == path.endswith("manifest.json")


def test_errors_carry_the_isolation_headers_too(port):
    for path, method, code in (("/missing.js", "GET", 404), ("/", "POST", 405)):
        status, headers, _ = fetch(port, path, method)
        assert status == code and {name: headers[name] for name in ISOLATION} == ISOLATION


def test_manifest_and_listed_files_are_byte_exact(port, roots):
    for name in ("manifest.json", "image_encoder.onnx", "tokenizer.json", "golden.json"):
        status, _, body = fetch(port, f"/bundle/{name}")
        assert status == 200 and body == (roots["bundle"] / name).read_bytes(), name
    assert fetch(port, "/assets/ort.wasm")[2] == (roots["demo"] / "assets" / "ort.wasm").read_bytes()


@pytest.mark.parametrize("path", [
    "/bundle/unlisted.onnx",  # in the bundle directory, not in the manifest
    "/bundle/.hidden", "/bundle/link", "/bundle/", "/bundle", "/bundle/image_encoder.onnx/",
    "/.env", "/out", "/assets", "/assets/", "/missing.html", "/bundle/index.html", "/manifest.json",
])
def test_only_allow_listed_files_are_served(port, path):
    status, _, body = fetch(port, path)
    assert status == 404 and SECRET not in body


@pytest.mark.parametrize("path", [
    "/bundle/../secret", "/bundle/%2e%2e/secret", "/bundle/%2E%2E/secret", "/bundle/..%2fsecret",
    "/bundle/%2e%2e%2fsecret", "/../secret", "/%2e%2e/secret", "/assets/../../secret", "/assets/..%5c..%5csecret",
    "/../etc/passwd", "/bundle//etc/passwd", "//etc/passwd", "/bundle/%2fetc%2fpasswd", "/bundle/%252e%252e/secret",
    "/bundle/./manifest.json", "/bundle/manifest.json%00.png", "/%ff", "/etc/passwd",
])
def test_traversal_is_404(port, path):
    status, _, body = fetch(port, path)
    assert status == 404 and SECRET not in body and b"root:" not in body


def test_a_listed_file_that_links_out_of_the_bundle_is_404(tmp_path):
    """The manifest lists it and its sha256 matches (load_bundle follows the link), but it resolves outside the
    bundle directory, so the server refuses it; the listed files that stay inside are still served."""
    data = b"component bytes"
    bundle = write_bundle(tmp_path / "bundle", {"image_encoder.onnx": data, "golden.json": b"{}"})
    (tmp_path / "elsewhere.onnx").write_bytes(data)
    (bundle / "image_encoder.onnx").unlink()
    (bundle / "image_encoder.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "index.html").write_text("<p>demo</p>")
    server = serve_cmd.make_server(load_bundle(bundle), demo, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert fetch(port, "/bundle/image_encoder.onnx")[0] == 404
        assert fetch(port, "/bundle/golden.json")[:3:2] == (200, b"{}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_methods_other_than_get_and_head_are_405(port, method):
    status, headers, _ = fetch(port, "/bundle/manifest.json", method)
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_head_sends_the_headers_without_the_body(port, roots):
    status, headers, body = fetch(port, "/bundle/image_encoder.onnx", "HEAD")
    size = (roots["bundle"] / "image_encoder.onnx").stat().st_size
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == size
    assert headers["Accept-Ranges"] == "bytes" and headers["Cross-Origin-Embedder-Policy"] == "require-corp"


def test_range_requests(port, roots):
    data = (roots["bundle"] / "image_encoder.onnx").read_bytes()
    size = len(data)
    for spec, first, last in (("bytes=1000-1999", 1000, 1999), ("bytes=300000-", 300000, size - 1),
                              ("bytes=-10", size - 10, size - 1), ("bytes=307000-999999", 307000, size - 1)):
        status, headers, body = fetch(port, "/bundle/image_encoder.onnx", headers={"Range": spec})
        assert status == 206, spec
        assert body == data[first:last + 1] and headers["Content-Range"] == f"bytes {first}-{last}/{size}", spec
        assert int(headers["Content-Length"]) == last - first + 1
    status, headers, _ = fetch(port, "/bundle/image_encoder.onnx", headers={"Range": f"bytes={size}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    # several ranges, or a malformed one: the whole file (RFC 9110 lets a server ignore Range)
    for spec in ("bytes=0-1,5-9", "bytes=9-2", "items=0-1", "bytes=a-b"):
        status, _, body = fetch(port, "/bundle/image_encoder.onnx", headers={"Range": spec})
        assert status == 200 and body == data, spec


def test_keep_alive_serves_several_requests_on_one_connection(port, roots):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for path in ("/bundle/manifest.json", "/assets/ort.wasm", "/missing", "/bundle/golden.json"):
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            assert response.status == (404 if path == "/missing" else 200), path
        assert body == b"{}"
    finally:
        connection.close()


def test_a_foreign_host_name_is_refused_on_a_loopback_bind(port):
    """DNS rebinding: a page on another origin whose name now points at 127.0.0.1 sends its own Host."""
    assert fetch(port, "/bundle/manifest.json", headers={"Host": "attacker.example"})[0] == 421
    for host in ("localhost:9999", "127.0.0.1", "[::1]:8000", "LOCALHOST", "127.0.0.1:"):
        assert fetch(port, "/bundle/manifest.json", headers={"Host": host})[0] == 200, host
    for host in ("127.0.0.1:80\\x", "127.0.0.1@attacker.example", "127.0.0.1:x", "[::1", "localhost.attacker.example"):
        assert fetch(port, "/bundle/manifest.json", headers={"Host": host})[0] == 421, host
    # an absolute-form target's authority stands in for Host
    assert fetch(port, "http://attacker.example/bundle/manifest.json")[0] == 421
    answer = fetch(port, "http://localhost/bundle/golden.json", headers={"Host": "attacker.example"})
    assert answer[:3:2] == (200, b"{}")


def test_loopback_detection():
    assert all(serve_cmd.is_loopback(h) for h in ("127.0.0.1", "127.3.0.1", "localhost", "::1", "[::1]"))
    assert not any(serve_cmd.is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.20", "example.com"))


def read_lines(stream: object, lines: queue.Queue) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


def listening_address(port: int) -> str:
    """The local address of the LISTEN socket on ``port``, read from /proc/net/tcp (Linux)."""
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":
            return ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
    raise AssertionError(f"nothing listens on port {port}")


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the listening socket from /proc/net/tcp")
def test_cli_binds_loopback_by_default_and_stops_on_ctrl_c(roots):
    """The runner's view: the first stdout line is exactly `serving http://127.0.0.1:PORT/`, flushed while the
    server runs; the socket listens on 127.0.0.1 only; SIGINT stops it with exit 0."""
    command = [sys.executable, "-m", "pocketvlm.cli.main", "serve", "--bundle", str(roots["bundle"]),
               "--demo-dir", str(roots["demo"]), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        first = lines.get(timeout=60)
        match = re.fullmatch(r"serving http://127\.0\.0\.1:(\d+)/\n", first)
        assert match, first
        port = int(match.group(1))
        second = lines.get(timeout=10)
        assert str(roots["bundle"].resolve()) in second and str(roots["demo"].resolve()) in second
        assert listening_address(port) == "127.0.0.1"
        assert fetch(port, "/")[0] == 200 and fetch(port, "/bundle/golden.json")[2] == b"{}"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stderr.read() and "Traceback" not in first + second
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_an_explicit_network_host_warns(roots, monkeypatch, capsys):
    """--host 0.0.0.0 prints the URL it was given and a one-line warning; the socket here is still bound to
    127.0.0.1 (the test never listens on a network), and serve_forever is interrupted as Ctrl-C would."""
    real = serve_cmd.make_server
    bound = []

    def loopback_only(bundle, demo_dir, host, port, verbose, **options):
        server = real(bundle, demo_dir, "127.0.0.1", port, verbose, **options)
        bound.append(host)

        def interrupted() -> None:
            raise KeyboardInterrupt

        server.serve_forever = interrupted
        return server

    monkeypatch.setattr(serve_cmd, "make_server", loopback_only)
    assert main(["serve", "--bundle", str(roots["bundle"]), "--demo-dir", str(roots["demo"]), "--port", "0",
                 "--host", "0.0.0.0"]) == 0
    out, err = capsys.readouterr()
    assert bound == ["0.0.0.0"] and re.fullmatch(r"serving http://0\.0\.0\.0:\d+/", out.splitlines()[0])
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "anyone" in warnings[0] and "0.0.0.0" in warnings[0]


def never_serve(*args: object) -> None:
    raise AssertionError("a server was started for a request that must exit 2")


def test_a_tampered_bundle_exits_2_with_one_line(roots, monkeypatch, capsys):
    monkeypatch.setattr(serve_cmd, "make_server", never_serve)
    path = roots["bundle"] / "image_encoder.onnx"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["serve", "--bundle", str(roots["bundle"]), "--demo-dir", str(roots["demo"]), "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "image_encoder.onnx" in err and "sha256" in err


def test_a_missing_demo_dir_exits_2_naming_the_build(roots, monkeypatch, capsys):
    monkeypatch.setattr(serve_cmd, "make_server", never_serve)
    missing = roots["tmp"] / "web-demo" / "dist"
    assert main(["serve", "--bundle", str(roots["bundle"]), "--demo-dir", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and str(missing) in err and BUILD_FIX in err
    # the default: web-demo/dist of the repository the package is installed from, named in the error
    repository = Path(__file__).resolve().parents[1]
    assert repository / "web-demo" / "dist" == serve_cmd.DEFAULT_DEMO_DIR
    monkeypatch.setattr(serve_cmd, "DEFAULT_DEMO_DIR", missing)
    assert main(["serve", "--bundle", str(roots["bundle"])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{missing} has no index.html" in err and BUILD_FIX in err


def test_bad_arguments_exit_2(roots, monkeypatch, capsys):
    monkeypatch.setattr(serve_cmd, "make_server", never_serve)
    assert main(["serve", "--bundle", str(roots["tmp"] / "nope"), "--demo-dir", str(roots["demo"])]) == 2
    assert main(["serve", "--bundle", str(roots["bundle"]), "--demo-dir", str(roots["demo"]),
                 "--port", "70000"]) == 2
    assert main(["serve", "--bundle", str(roots["bundle"]), "--demo-dir", str(roots["demo"]),
                 "--max-connections", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "bundle directory not found" in errors[0] and "--port 70000" in errors[1]
    assert "--max-connections 0" in errors[2]
