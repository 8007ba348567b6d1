"""``pocketvlm serve`` under load and abuse: 200 connections from a second process, traversal attempts, the
connection bound, oversized request heads, bodies never read, silent and trickling clients (fixtures:
serve_fixtures)."""


from __future__ import annotations

import collections
import contextlib
import hashlib
import http.client
import importlib.util
import select
import socket
import threading
import time
from pathlib import Path
from types import ModuleType

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pocketvlm.cli import serve_cmd
from pocketvlm.runtime.manifest import load_bundle
from tests.serve_fixtures import ISOLATION, SECRET, fetch, running


def accept_queue(port: int) -> int:
    """Connections waiting in the kernel's accept queue of the LISTEN socket on ``port`` (its rx_queue)."""
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on port {port}")


def load_benchmark() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


serve_load = load_benchmark()


def test_load_200_connections_from_a_second_process_every_sha256_intact(roots, port):
    """200 connections open at once from another process (one thread each), random single-range GETs covering
    every listed file; 32 handler threads serve them in turn. No error, every reassembled file's sha256 intact,
    and the server never runs more than its 32 handler threads plus a few."""
    before = threading.active_count()
    load = serve_load.run_load(f"http://127.0.0.1:{port}/", roots["bundle"] / "manifest.json", connections=200,
                               per_connection=2, seed=7, timeout=30, threads=threading.active_count)
    print(f"load: {load['served']}/{load['requests']} served, {load['errors']} errors, p50 "
          f"{load['latency_ms']['p50']} ms, p99 {load['latency_ms']['p99']} ms, {load['wall_s']} s")
    assert load["client_pid_differs"] and load["connections"] == 200
    assert load["errors"] == 0, load["first_errors"]
    assert load["requests"] == load["served"] >= 400 and load["files_sha256_intact"] == load["files"] == 4
    assert load["server_threads_peak"] <= before + serve_cmd.DEFAULT_MAX_CONNECTIONS + 2


def test_the_load_plan_covers_every_file_exactly():
    files = [{"path": "a", "bytes": 1000}, {"path": "b", "bytes": 1}, {"path": "c", "bytes": 0},
             {"path": "d", "bytes": 70000}]
    schedule = serve_load.plan(files, connections=50, per_connection=3, seed=3)
    covered: dict[str, list[tuple[int, int]]] = {}
    for pieces in schedule:
        for path, first, last, _ in pieces:
            covered.setdefault(path, []).append((first, last))
    for entry in files:
        spans = sorted(covered[entry["path"]])
        assert spans[0][0] == 0 and spans[-1][1] == entry["bytes"] - 1, entry
        assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:])), entry  # no gap, no overlap
    assert serve_load.plan(files, 50, 3, 3) == schedule != serve_load.plan(files, 50, 3, 4)


def test_the_benchmark_traversal_list_finds_nothing(roots, port):
    allowed = serve_load.allowed_digests(roots["bundle"], roots["demo"])
    probe = serve_load.probe_traversal(port, allowed)
    print(f"traversal attempts tried: {probe['attempts']}")
    assert probe["attempts"] == len(serve_load.TRAVERSAL_ATTEMPTS) > 60 and probe["leaks"] == []
    assert all(result["status"] in serve_load.REFUSALS for result in probe["results"]
               if "secret" in result["target"].split("?")[0].split("#")[0])
    # the checker can fail: the secret is not an allowed body
    assert hashlib.sha256(SECRET).hexdigest() not in allowed


PIECES = ("..", "%2e%2e", "%2E%2e", "%2e", ".", "%252e", "%252e%252e", "%c0%ae", "%c0%ae%c0%ae", "%c0%af",
          "\uff0e", "\uff0e\uff0e", "%ef%bc%8e", "%00", ";", "?", "#", "%23", "%3f", "bundle", "secret", "index.html",
          "manifest.json", "image_encoder.onnx", "assets", "ort.wasm", ".env", ".hidden", "link", "out",
          "unlisted.onnx", "etc", "passwd", "%", "", "bundle/manifest.json", "assets/ort.wasm", "bundle/golden.json")
SEPARATORS = ("/", "/", "/", "//", "\\", "%5c", "%2f", "%2F", "%252f")
PREFIXES = ("", "", "/bundle", "http://127.0.0.1{port}", "http://localhost{port}", "http://attacker.example")
STARTS = ("", "", "", "/bundle/manifest.json", "/bundle/golden.json", "/assets/ort.wasm", "/index.html", "/")
TAILS = ("?", "#", ";", "/", "", "%3f", "%23")  # after an allow-listed path, before the traversal parts
TRIED: list[tuple[str, int]] = []  # every concrete target the property test sent, and its status
segments = st.lists(st.tuples(st.sampled_from(SEPARATORS),
                              st.lists(st.sampled_from(PIECES), min_size=1, max_size=2).map("".join)),
                    min_size=1, max_size=4)


@settings(derandomize=True, max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(PREFIXES), start=st.sampled_from(STARTS), tail=st.sampled_from(TAILS), parts=segments,
       with_port=st.booleans())
@example(prefix="", start="", tail="", parts=[("/", ".."), ("/", "secret")], with_port=False)
@example(prefix="", start="", tail="", parts=[("/", "assets"), ("/", ".."), ("/", ".."), ("/", "secret")],
         with_port=False)
@example(prefix="http://127.0.0.1{port}", start="", tail="", parts=[("/", "%2e%2e"), ("/", "secret")], with_port=True)
@example(prefix="", start="", tail="", parts=[("/", ".env")], with_port=False)
@example(prefix="", start="", tail="", parts=[("/", "out")], with_port=False)
@example(prefix="/bundle", start="", tail="", parts=[("/", "link")], with_port=False)
def test_traversal_property_only_refusals_or_allow_listed_bytes(roots, port, prefix, start, tail, parts, with_port):
    """Request targets built from traversal pieces (one server for all examples), sent as raw UTF-8 bytes: the
    answer is a refusal or exactly the bytes of one allow-listed file; never the secret next to the bundle and the
    demo, never a listing."""
    if roots["bundle"] not in ALLOWED:
        ALLOWED[roots["bundle"]] = serve_load.allowed_digests(roots["bundle"], roots["demo"])
    target = (prefix.replace("{port}", f":{port}" if with_port else "") + (start + tail if start else "")
              + "".join(sep + part for sep, part in parts))
    status, body = serve_load.raw_get(port, target)
    TRIED.append((target, status))
    assert SECRET not in body, target
    if status in (200, 206):
        assert hashlib.sha256(body).hexdigest() in ALLOWED[roots["bundle"]], target
    else:
        assert status in serve_load.REFUSALS, (target, status)


ALLOWED: dict[Path, set[str]] = {}


def test_traversal_property_tried_many_distinct_targets():
    """Runs after the property test (file order): how many concrete targets it sent (the list with -s)."""
    distinct = sorted(set(TRIED))
    statuses = collections.Counter(status for _, status in distinct)
    print(f"traversal property: {len(TRIED)} attempts, {len(distinct)} distinct, by status {dict(statuses)}")
    for target, status in distinct:
        print(f"  {status} {target!r}")
    if TRIED:  # empty when this test runs alone
        assert len(distinct) > 400 and statuses[200] > 10 and statuses[404] > 200  # both sides exercised


def wait_until(condition: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def exchange(port: int, data: bytes) -> tuple[int, http.client.HTTPMessage, bytes, bytes]:
    """Send ``data`` as is, read one response, then whatever follows until the server closes (b"" if nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        response = http.client.HTTPResponse(connection)
        response.begin()
        body = response.read()
        rest = b""
        while block := connection.recv(65536):  # the server closes: EOF, not the 10 s timeout
            rest += block
        return response.status, response.headers, body, rest


def test_connections_beyond_the_bound_wait_in_the_backlog_and_are_then_served(roots):
    """3 handler threads, 3 idle connections holding them: 5 more connections are accepted by the kernel (not
    refused), their requests wait unanswered, the thread count stays at the bound plus the accept loop; once the
    idle ones close, all 5 are served."""
    before = threading.active_count()
    server = serve_cmd.make_server(load_bundle(roots["bundle"]), roots["demo"], "127.0.0.1", 0, max_connections=3)
    with running(server) as port:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        waiting = []
        try:
            wait_until(lambda: len(server.active) == 3)
            for _ in range(5):
                connection = socket.create_connection(("127.0.0.1", port), timeout=10)  # queued, not refused
                waiting.append(connection)
                connection.sendall(b"GET /bundle/golden.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            readable, _, _ = select.select(waiting, [], [], 0.5)
            assert readable == [] and len(server.active) == 3  # waiting, unanswered
            assert server.pending.qsize() == 0  # not accepted into the process either: in the kernel's queue
            if Path("/proc/net/tcp").exists():
                assert accept_queue(port) == 5
            assert threading.active_count() <= before + 3 + 2  # the 3 handlers, the accept loop, one spare
        finally:
            for connection in idle:
                connection.close()
        try:
            for connection in waiting:
                response = http.client.HTTPResponse(connection)
                response.begin()
                assert (response.status, response.read()) == (200, b"{}")
                assert threading.active_count() <= before + 3 + 2
        finally:
            for connection in waiting:
                connection.close()


def assert_refused_and_closed(port: int, data: bytes, code: int) -> None:
    status, headers, _, rest = exchange(port, data)
    assert status == code and {name: headers[name] for name in ISOLATION} == ISOLATION
    assert headers["Connection"] == "close" and rest == b""


def test_oversized_request_heads_are_414_and_431(port):
    line = b"GET /%s HTTP/1.1\r\n"
    fits = line % (b"a" * (8192 - len(line % b"")))  # exactly 8 KiB with its CRLF: not found, but read
    assert exchange(port, fits + b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")[0] == 404
    assert_refused_and_closed(port, line % (b"a" * 8200) + b"Host: 127.0.0.1\r\n\r\n", 414)
    get = b"GET /bundle/golden.json HTTP/1.1\r\nConnection: close\r\n"
    headers = b"".join(b"X-H%d: v\r\n" % index for index in range(63))
    assert exchange(port, get + headers + b"\r\n")[:3:2] == (200, b"{}")  # 64 with Connection: close
    assert_refused_and_closed(port, get + headers + b"X-One-More: v\r\n\r\n", 431)
    assert exchange(port, get + b"X-Big: " + b"b" * 8000 + b"\r\n\r\n")[:3:2] == (200, b"{}")
    assert_refused_and_closed(port, get + b"X-Big: " + b"b" * 8200 + b"\r\n\r\n", 431)


def test_a_body_on_get_is_never_read(port):
    """Content-Length on a GET: the response, then the connection closes; what followed (which looks like a
    second request) is never parsed as one."""
    smuggled = b"GET /bundle/manifest.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    status, headers, body, rest = exchange(port, b"GET /bundle/golden.json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled))
    assert (status, body, rest) == (200, b"{}", b"") and headers["Connection"] == "close"
    status, _, _, rest = exchange(port, b"POST /bundle/golden.json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                        b"Content-Length: 100000\r\n\r\n" + b"x" * 100000)
    assert status == 405 and rest == b""


def test_a_silent_or_trickling_client_is_disconnected_after_the_timeout(roots):
    """One handler thread, a 1 s timeout set on the server: a client that connects and sends nothing is closed
    after it, and a request that waited behind it is then served; a client that sends one byte every 0.1 s never
    lets a socket read time out, but its request head is still cut off at the deadline."""
    server = serve_cmd.make_server(load_bundle(roots["bundle"]), roots["demo"], "127.0.0.1", 0, max_connections=1)
    server.idle_timeout = 1.0
    with running(server) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            began = time.monotonic()
            wait_until(lambda: len(server.active) == 1)
            status, _, body = fetch(port, "/bundle/golden.json")  # waits for the only thread
            served = time.monotonic() - began
            assert (status, body) == (200, b"{}") and 0.8 < served < 5
            assert silent.recv(1) == b""  # closed by the server
        with socket.create_connection(("127.0.0.1", port), timeout=10) as trickle:
            began, closed = time.monotonic(), None
            for byte in b"GET /bundle/golden.json HTTP/1.1\r\nX-Slow: " + b"z" * 60:  # 10 s at this pace
                if select.select([trickle], [], [], 0.1)[0]:
                    with contextlib.suppress(ConnectionError):
                        assert trickle.recv(1) == b""
                    closed = time.monotonic() - began
                    break
                trickle.send(bytes([byte]))
            assert closed is not None and 0.8 < closed < 3
        assert fetch(port, "/bundle/golden.json")[2] == b"{}"
