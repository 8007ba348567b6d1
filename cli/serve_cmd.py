"""pocketvlm serve --bundle DIR [--port N] [--host H] [--demo-dir PATH]: the web demo at / and the bundle at /bundle/.

Standard library only (``http.server``), and nothing of the exporter: the bundle is checked with the runtime's
``load_bundle`` (every sha256) before the socket opens. What is served is an allow-list, never a directory walk:
under ``/bundle/`` only ``manifest.json`` and the files the manifest lists; under ``/`` only regular files inside the
demo directory. Dotfiles, ``..``, encoded separators, empty segments and symlinks that resolve outside their root are
404; methods other than GET and HEAD are 405. Every response carries the cross-origin isolation headers that wasm
threads (``SharedArrayBuffer``) need.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

import pocketvlm.cli
from pocketvlm.runtime.errors import InputError
from pocketvlm.runtime.manifest import MANIFEST_NAME, Bundle, load_bundle

BUILD_FIX = "npm --prefix web-demo ci && npm --prefix web-demo run build"
DEFAULT_DEMO_DIR = Path(pocketvlm.cli.__file__).resolve().parents[1] / "web-demo" / "dist"
BUNDLE_PREFIX = "bundle"
CHUNK = 1 << 20
ISOLATION_HEADERS = (
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Embedder-Policy", "require-corp"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("X-Content-Type-Options", "nosniff"),
)
# by suffix; anything else is application/octet-stream (never guessed from the platform's mime registry)
MIME_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json",
    ".map": "application/json", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
    ".tflite": "application/octet-stream", ".bin": "application/octet-stream", ".png": "image/png",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".svg": "image/svg+xml",
    ".ico": "image/x-icon", ".jinja": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2", ".webmanifest": "application/manifest+json",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    required = parser.add_argument_group("required")
    required.add_argument("--bundle", required=True, type=Path, help="bundle directory written by `pocketvlm export`")
    optional = parser.add_argument_group("optional")
    optional.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    optional.add_argument("--host", default=None,
                          help="address to listen on (default 127.0.0.1, this machine only; any other address lets "
                               "anyone on that network fetch the bundle)")
    optional.add_argument("--demo-dir", type=Path, default=None,
                          help=f"built web demo (default: {DEFAULT_DEMO_DIR}, built by `{BUILD_FIX}`)")
    optional.add_argument("--verbose", action="store_true", help="one line per request on stderr")


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def safe_segments(url_path: str) -> list[str] | None:
    """The decoded path segments of a request path, or None when any segment could leave its root or name a
    hidden file: empty (``//``, a trailing ``/``), ``.``/``..`` and dotfiles, or one that decodes to a separator
    or a NUL (``%2f``, ``%5c``, ``%00``). Decoding happens per segment, so ``%2e%2e`` is caught as ``..``."""
    if not url_path.startswith("/"):
        return None
    segments = [unquote(raw, errors="strict") if "%" in raw else raw for raw in url_path[1:].split("/")]
    for segment in segments:
        if not segment or segment.startswith(".") or any(c in segment for c in "/\\\0"):
            return None
    return segments


def inside(root: Path, candidate: Path) -> Path | None:
    """``candidate`` with every symlink resolved, if that is a regular file under ``root`` (already resolved)."""
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        return None
    return resolved


def bundle_allow_list(bundle: Bundle) -> dict[str, Path]:
    """URL path under /bundle/ -> file: manifest.json, every ``files[].path`` and every ``components.*.file``."""
    listed = [MANIFEST_NAME, *(entry["path"] for entry in bundle.manifest["files"]),
              *(spec.file for spec in bundle.components.values())]
    allowed = {}
    for relative in listed:
        parts = relative.split("/")
        if all(part and not part.startswith(".") and "\\" not in part for part in parts):
            allowed[relative] = bundle.path / relative
    return allowed


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=`` range as (first, last) inclusive; "unsatisfiable" for 416; None to send the whole file
    (malformed or several ranges: RFC 9110 lets a server ignore a Range header)."""
    unit, _, spec = header.partition("=")
    first_text, dash, last_text = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or "," in spec:
        return None
    if first_text == "":  # a suffix: the last N bytes
        if not last_text.isdigit():
            return None
        return (max(size - int(last_text), 0), size - 1) if int(last_text) and size else "unsatisfiable"
    if not first_text.isdigit() or not (last_text == "" or last_text.isdigit()):
        return None
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return first, min(int(last_text), size - 1) if last_text else size - 1


class DemoHandler(BaseHTTPRequestHandler):
    """GET and HEAD of allow-listed files; set up by ``make_server`` (the class attributes below)."""

    protocol_version = "HTTP/1.1"
    server_version = "pocketvlm-serve"
    timeout = 60  # an idle keep-alive connection gives its thread back
    bundle_files: dict[str, Path] = {}
    bundle_root: Path = Path()
    demo_root: Path = Path()
    loopback_only = True
    verbose = False

    def version_string(self) -> str:
        return self.server_version

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS:  # on every response, errors included
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # the base class's signature
        if self.verbose:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def __getattr__(self, name: str) -> Callable[[], None]:
        # the base class answers a method without a do_<METHOD> with 501; every method but GET and HEAD is 405 here
        if name.startswith("do_"):
            return self.refuse_method
        raise AttributeError(name)

    def refuse_method(self) -> None:
        self.close_connection = True  # any request body is left unread
        self.send_text(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed: GET and HEAD only\n", allow=True)

    def do_GET(self) -> None:  # http.server's naming
        self.serve(body=True)

    def do_HEAD(self) -> None:
        self.serve(body=False)

    def send_text(self, status: HTTPStatus, text: str, allow: bool = False) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if allow:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def resolve(self) -> tuple[Path, bool] | None:
        """The file a request names and whether it is the bundle's manifest, or None (404)."""
        url_path = urlsplit(self.path).path
        segments = safe_segments(url_path) if url_path != "/" else ["index.html"]
        if segments is None:
            return None
        if segments[0] == BUNDLE_PREFIX:
            relative = "/".join(segments[1:])
            candidate = self.bundle_files.get(relative)
            found = inside(self.bundle_root, candidate) if candidate is not None else None
            return (found, relative == MANIFEST_NAME) if found else None
        found = inside(self.demo_root, self.demo_root.joinpath(*segments))
        return (found, False) if found else None

    def host_allowed(self) -> bool:
        """On a loopback bind, only a loopback name (or none) in Host: a web page elsewhere cannot point its own
        DNS name at 127.0.0.1 and read the bundle as its own origin (DNS rebinding)."""
        host = (self.headers.get("Host") or "").strip()
        if not self.loopback_only or not host:
            return True
        name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        return is_loopback(name)

    def serve(self, body: bool) -> None:
        if not self.host_allowed():
            self.send_text(HTTPStatus.MISDIRECTED_REQUEST, "this server answers to localhost only\n")
            return
        try:
            target = self.resolve()
        except UnicodeDecodeError:
            target = None
        if target is None:
            self.send_text(HTTPStatus.NOT_FOUND, "not found\n")
            return
        path, is_manifest = target
        try:
            handle = open(path, "rb")  # noqa: SIM115 (closed below, after streaming)
        except OSError:
            self.send_text(HTTPStatus.NOT_FOUND, "not found\n")
            return
        with handle:
            size = path.stat().st_size
            span = parse_range(self.headers.get("Range", ""), size) if self.headers.get("Range") else None
            if span == "unsatisfiable":
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            first, last = span if isinstance(span, tuple) else (0, size - 1)
            self.send_response(HTTPStatus.PARTIAL_CONTENT if isinstance(span, tuple) else HTTPStatus.OK)
            self.send_header("Content-Type", MIME_TYPES.get(path.suffix.lower(), "application/octet-stream"))
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Accept-Ranges", "bytes")
            if isinstance(span, tuple):
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            if is_manifest:
                self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if body:
                self.copy(handle, first, last - first + 1)

    def copy(self, handle: Any, offset: int, count: int) -> None:
        handle.seek(offset)
        try:
            while count > 0 and (block := handle.read(min(CHUNK, count))):
                self.wfile.write(block)
                count -= len(block)
        except (BrokenPipeError, ConnectionResetError):  # the browser cancelled a download: nothing to report
            self.close_connection = True


def find_demo_dir(demo_dir: Path | None) -> Path:
    where = Path(demo_dir) if demo_dir is not None else DEFAULT_DEMO_DIR
    if not (where / "index.html").is_file():
        fix = (f"build it with `{BUILD_FIX}`" if demo_dir is None
               else f"pass --demo-dir a built web demo (`{BUILD_FIX}` builds web-demo/dist)")
        raise InputError(f"no built web demo: {where} has no index.html", fix)
    return where.resolve()


def make_server(bundle: Bundle, demo_dir: Path, host: str = "127.0.0.1", port: int = 0,
                verbose: bool = False) -> ThreadingHTTPServer:
    """A bound (not yet serving) server for ``bundle`` and ``demo_dir``; ``serve_forever`` runs it."""
    handler = type("BoundDemoHandler", (DemoHandler,), {
        "bundle_files": bundle_allow_list(bundle), "bundle_root": bundle.path.resolve(),
        "demo_root": demo_dir.resolve(), "loopback_only": is_loopback(host), "verbose": verbose})
    server_class = ThreadingHTTPServer
    if ":" in host:
        server_class = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    try:
        return server_class((host.strip("[]"), port), handler)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                         "pick another --port (--port 0 takes a free one) or another --host") from exc


def url(server: ThreadingHTTPServer, host: str) -> str:
    port = server.server_address[1]
    return f"http://[{host.strip('[]')}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def stop_on_sigterm() -> None:
    """SIGTERM (a runner stopping the server) ends it as Ctrl-C does."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a TCP port", "pass 0 to 65535 (0 picks a free port)")
    demo_dir = find_demo_dir(args.demo_dir)
    bundle = load_bundle(args.bundle)  # every sha256, before anything is served
    host = args.host or "127.0.0.1"
    server = make_server(bundle, demo_dir, host, args.port, args.verbose)
    print(f"serving {url(server, host)}", flush=True)
    files = len(bundle_allow_list(bundle))
    print(f"bundle {bundle.path.resolve()} ({bundle.family}, {files} files, {bundle.total_bytes / 1e6:.1f} MB) at "
          f"/bundle/; demo {demo_dir} at /", flush=True)
    if not is_loopback(host):
        print(f"warning: listening on {host}: anyone who can reach this address can fetch the bundle and the demo",
              file=sys.stderr, flush=True)
    stop_on_sigterm()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr, flush=True)
    finally:
        server.server_close()
    return 0
