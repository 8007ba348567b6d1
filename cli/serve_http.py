"""The HTTP side of ``pocketvlm serve``: the request handler (allow-listed GET/HEAD, single byte ranges, the size and
time bounds on a request's head, the isolation headers) and the bounded server (a fixed pool of handler threads).

Standard library only. ``serve_cmd`` builds the allow-list from a checked bundle and binds the server.
"""

from __future__ import annotations

import http.client
import ipaddress
import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pocketvlm.runtime.manifest import MANIFEST_NAME

BUNDLE_PREFIX = "bundle"
CHUNK = 1 << 20
DEFAULT_MAX_CONNECTIONS = 32  # handler threads; further connections wait in the listen backlog
LISTEN_BACKLOG = 512
IDLE_TIMEOUT = 60.0  # seconds: a request's head must arrive within it (idle keep-alive and slow clients included)
MAX_REQUEST_LINE = 8192  # bytes, with its CRLF (http.server allows 65536)
MAX_HEADER_LINE = 8192  # bytes (http.client's parser allows 65536)
MAX_HEADERS = 64  # (http.client's parser allows 100)
LINGER_BYTES = 1 << 16  # after an error with input left unread: read and drop this much, so the client sees it
LINGER_SECONDS = 1.0
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
    timeout: float = IDLE_TIMEOUT  # the server's idle_timeout replaces it (``setup``)
    bundle_files: dict[str, Path] = {}
    bundle_root: Path = Path()
    demo_root: Path = Path()
    loopback_only = True
    verbose = False
    input_left = False  # unread input (an oversized head, a body): drained a little before closing
    connection_header_sent = False

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        self.timeout = getattr(self.server, "idle_timeout", self.timeout)
        super().setup()
        self.stream = self.rfile  # read_line's, while HeadReader stands in for rfile

    def read_line(self, limit: int, deadline: float) -> bytes:
        """One line with its ``\\n``, at most ``limit + 1`` bytes (more than ``limit`` means too long), b"" at end
        of stream; all of it before ``deadline``, so a client that trickles bytes cannot keep its thread either."""
        line = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request head not received in time")
            self.connection.settimeout(remaining)
            window = self.stream.peek(1)[:limit + 1 - len(line)]  # type: ignore[attr-defined]  # a BufferedReader
            if not window:
                return line
            end = window.find(b"\n")
            line += self.stream.read(end + 1 if end >= 0 else len(window))
            if end >= 0 or len(line) > limit:
                return line

    def handle_one_request(self) -> None:
        """http.server's, with the head read under ``read_line``'s deadline and the size bounds."""
        deadline = time.monotonic() + self.timeout
        try:
            self.raw_requestline = self.read_line(MAX_REQUEST_LINE, deadline)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.input_left = True
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, f"request line over {MAX_REQUEST_LINE} bytes")
                return
            stream, self.rfile = self.rfile, HeadReader(self, deadline)  # type: ignore[assignment]
            try:
                parsed = self.parse_request()
            finally:
                self.rfile = stream
            if not parsed:
                self.input_left = True
                return
            self.connection.settimeout(self.timeout)
            if self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers:
                self.close_connection = self.input_left = True  # a body is never read
            getattr(self, f"do_{self.command}")()
            self.wfile.flush()
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        return True  # no "100 Continue": a body is never read

    def finish(self) -> None:
        super().finish()
        if self.input_left:  # closing with unread input sends a reset, which can drop the response on its way
            try:
                self.connection.shutdown(socket.SHUT_WR)
                deadline, dropped = time.monotonic() + LINGER_SECONDS, 0
                while dropped < LINGER_BYTES and (remaining := deadline - time.monotonic()) > 0:
                    self.connection.settimeout(remaining)
                    if not (block := self.connection.recv(LINGER_BYTES)):
                        break
                    dropped += len(block)
            except OSError:
                pass

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "connection":
            self.connection_header_sent = True
        super().send_header(keyword, value)

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS:  # on every response, errors included
            self.send_header(name, value)
        if self.close_connection and not self.connection_header_sent:  # the client knows not to reuse it
            self.send_header("Connection", "close")
        self.connection_header_sent = False
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
        DNS name at 127.0.0.1 and read the bundle as its own origin (DNS rebinding). An absolute-form target's
        authority stands in for Host (RFC 9112 3.2.2)."""
        host = urlsplit(self.path).netloc or (self.headers.get("Host") or "").strip()
        if not self.loopback_only or not host:
            return True
        try:
            parts = urlsplit(f"//{host}")
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            return False
        return "@" not in host and parts.hostname is not None and is_loopback(parts.hostname)

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


class HeaderTooLong(http.client.LineTooLong):
    def __init__(self) -> None:
        http.client.HTTPException.__init__(self, f"a header line over {MAX_HEADER_LINE} bytes")


class HeadReader:
    """What ``parse_request`` reads the header lines from (in place of ``rfile``): the handler's connection, under
    the request's deadline, at most MAX_HEADERS lines of at most MAX_HEADER_LINE bytes (beyond either,
    ``parse_request`` answers 431)."""

    def __init__(self, handler: DemoHandler, deadline: float) -> None:
        self.handler, self.deadline, self.lines = handler, deadline, 0

    def readline(self, size: int = -1) -> bytes:
        line = self.handler.read_line(MAX_HEADER_LINE, self.deadline)
        if len(line) > MAX_HEADER_LINE:
            raise HeaderTooLong
        if line not in (b"\r\n", b"\n", b""):
            self.lines += 1
            if self.lines > MAX_HEADERS:
                raise http.client.HTTPException(f"more than {MAX_HEADERS} header lines")
        return line


class BoundedHTTPServer(HTTPServer):
    """An HTTP server with a fixed pool of ``max_connections`` handler threads. ``serve_forever`` accepts a
    connection only while a thread is free, so the others wait in the listen backlog (``request_queue_size``) and
    are served in turn; each handler gives its thread back when its client closes, or after ``idle_timeout``."""

    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[DemoHandler],
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        self.slots = threading.Semaphore(max_connections)
        self.pending: queue.SimpleQueue[tuple[socket.socket, Any] | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.active: set[socket.socket] = set()
        self.workers: list[threading.Thread] = []
        self.stopping, self.stopped, self.closing = threading.Event(), threading.Event(), threading.Event()
        self.stopped.set()
        super().__init__(address, handler)
        self.socket.setblocking(False)  # a connection reset before accept() must not block the loop

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.stopping.clear()
        self.stopped.clear()
        self.start_workers()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.socket, selectors.EVENT_READ)
                while not self.stopping.is_set():
                    if not self.slots.acquire(timeout=poll_interval):
                        continue  # every thread is busy: new connections wait in the listen backlog
                    if not (selector.select(poll_interval) and self.accept_one()):
                        self.slots.release()
        finally:
            self.stopped.set()

    def accept_one(self) -> bool:
        try:
            request, address = self.socket.accept()
        except OSError:
            return False
        request.setblocking(True)
        self.pending.put((request, address))
        return True

    def start_workers(self) -> None:
        with self.lock:
            self.workers = [worker for worker in self.workers if worker.is_alive()]
            while len(self.workers) < self.max_connections:
                worker = threading.Thread(target=self.work, name=f"serve-worker-{len(self.workers)}", daemon=True)
                worker.start()
                self.workers.append(worker)

    def work(self) -> None:
        while (item := self.pending.get()) is not None:
            request, address = item
            with self.lock:
                self.active.add(request)
            try:
                if not self.closing.is_set():  # once server_close began, a queued connection is only closed
                    self.finish_request(request, address)
            except Exception:  # what socketserver does: report, and serve the next connection
                self.handle_error(request, address)
            finally:
                with self.lock:
                    self.active.discard(request)
                self.shutdown_request(request)
                self.slots.release()

    def shutdown(self) -> None:
        self.stopping.set()
        self.stopped.wait()

    def server_close(self) -> None:
        """The listening socket, then every open connection, then the threads (5 s at most for them all)."""
        self.closing.set()
        self.stopping.set()
        super().server_close()
        with self.lock:
            for request in self.active:
                with suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)
            workers, self.workers = self.workers, []
        for _ in workers:
            self.pending.put(None)
        deadline = time.monotonic() + 5
        for worker in workers:
            worker.join(timeout=max(deadline - time.monotonic(), 0))
        while True:
            try:
                item = self.pending.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])
