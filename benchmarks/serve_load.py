"""Load test of ``pocketvlm serve``: many concurrent range requests for a bundle's files from a second process.

    python benchmarks/serve_load.py --bundle DIR [--connections 200] [--requests-per-connection 4] [--seed 0]
                                    [--max-connections 32] [--out benchmarks/results/serve_load.json]

The script starts ``pocketvlm serve`` on a free loopback port (the built demo at web-demo/dist when there is one,
else a temporary folder holding an index.html), then a second process (this file with ``--client``) opens
``--connections`` connections at once (one thread each, all connected before the first request) and issues random
single-range GETs (seeded) that together cover every file the manifest lists; it reassembles each file and checks its
sha256 against the manifest. An error is any status other than 206 (200 for an empty file), a wrong Content-Range
or length, an exception, or a file whose sha256 differs. While the load runs, the server process's thread count is
sampled (/proc). After it, a fixed list of traversal attempts (``TRAVERSAL_ATTEMPTS``) is sent, each as raw bytes:
a leak is a 2xx whose body is not exactly one allow-listed file. Writes a machine-made JSON file (machine, tools,
figures) and stops the server.

``run_load`` (the second process) and ``probe_traversal`` are what tests/test_serve.py runs against its fixture.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "serve_load.json"
REFUSALS = (400, 404, 405, 414, 421, 431)  # what a request for anything outside the allow-list may get
# sent as raw bytes exactly as written ({port} is filled in); the fixture's tmp/secret sits next to the bundle
TRAVERSAL_ATTEMPTS = (
    "/bundle/../secret", "/bundle/../../etc/passwd", "/bundle/%2e%2e/secret", "/bundle/%2E%2E/secret",
    "/bundle/..%2fsecret", "/bundle/%2e%2e%2fsecret", "/bundle/%252e%252e/secret", "/bundle/%252e%252e%252fsecret",
    "/bundle/%c0%ae%c0%ae/secret", "/bundle/%c0%ae%c0%ae%c0%afsecret", "/bundle/..\\secret", "/bundle/%5c..%5csecret",
    "/bundle/..%5csecret", "/bundle/%2fetc%2fpasswd", "/bundle//etc/passwd", "//etc/passwd", "///etc/passwd",
    "/bundle/manifest.json%00.png", "/bundle/manifest.json%00", "/bundle/./manifest.json", "/bundle/.%2fmanifest.json",
    "/bundle/．．/secret", "/bundle/%ef%bc%8e%ef%bc%8e/secret", "/bundle/.hidden", "/bundle/.git/config", "/.env",
    "/.git/HEAD", "/bundle/", "/bundle", "/bundle/.", "/bundle/..", "/assets/", "/assets", "/..", "/../secret",
    "/%2e%2e/secret", "/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/assets/../../secret", "/assets/..%5c..%5csecret",
    "/etc/passwd", "/proc/self/environ", "/bundle/manifest.json/", "/bundle/manifest.json/..", "/bundle;/secret",
    "/bundle/..;/secret", "/bundle/%3b/../secret", "/bundle/..?/secret", "/bundle/..#/secret", "/bundle/%23/../secret",
    "/bundle/%3f/../secret", "/%ff", "/bundle/%ff", "/bundle/unlisted.onnx", "/bundle/link", "/out", "*",
    "bundle/manifest.json", "../secret", "http://127.0.0.1:{port}/bundle/../secret",
    "http://127.0.0.1:{port}/../../etc/passwd", "http://127.0.0.1:{port}//etc/passwd",
    "http://attacker.example/bundle/manifest.json", "http://127.0.0.1@attacker.example/bundle/manifest.json",
    "file:///etc/passwd", "/bundle/manifest.json?../../secret", "/bundle/manifest.json#../../secret",
    "/index.html/../../secret", "/bundle/image_encoder.onnx/../../secret",
)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), nearest rank on the sorted values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def plan(files: list[dict[str, Any]], connections: int, per_connection: int, seed: int) -> list[list[tuple]]:
    """Per connection, its (path, first, last, Range header or None) pieces: every file cut at random points into
    pieces (at least one; more for larger files) whose union is the file, shuffled and dealt out round-robin, so
    the ``connections * per_connection`` requests (more if there are more files) cover every file exactly."""
    rng = random.Random(seed)
    total_bytes = sum(entry["bytes"] for entry in files) or 1
    budget = max(connections * per_connection, len(files))
    pieces: list[tuple] = []
    for entry in files:
        size = entry["bytes"]
        if size == 0:
            pieces.append((entry["path"], 0, -1, None))
            continue
        count = min(size, max(1, round(budget * size / total_bytes)))
        cuts = sorted(rng.sample(range(1, size), count - 1)) if count > 1 else []
        for first, end in zip([0, *cuts], [*cuts, size], strict=True):
            last = end - 1
            form = rng.random()
            if last == size - 1 and first > 0 and form < 0.25:
                spec = f"bytes={first}-"
            elif last == size - 1 and form < 0.5:
                spec = f"bytes=-{size - first}"
            else:
                spec = f"bytes={first}-{last}"
            pieces.append((entry["path"], first, last, spec))
    rng.shuffle(pieces)
    return [pieces[index::connections] for index in range(connections)]


def client(url: str, manifest: dict[str, Any], connections: int, per_connection: int, seed: int,
           timeout: float) -> dict[str, Any]:
    """The load, in this process: ``connections`` threads, each with its own keep-alive connection."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    files = manifest["files"]
    sizes = {entry["path"]: entry["bytes"] for entry in files}
    buffers = {entry["path"]: bytearray(entry["bytes"]) for entry in files}
    schedule = plan(files, connections, per_connection, seed)
    latencies: list[float] = []
    errors: list[str] = []
    counts = {"requests": 0, "served": 0, "bytes": 0, "reconnects": 0}
    lock = threading.Lock()
    start = threading.Barrier(connections + 1)

    def fail(message: str) -> None:
        with lock:
            errors.append(message)

    def one_connection(index: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.connect()  # every connection open before the first request: they wait in the backlog
        except OSError as exc:
            fail(f"connection {index}: connect: {exc!r}")
        try:
            start.wait()
        except threading.BrokenBarrierError:
            return
        for path, first, last, spec in schedule[index]:
            began = time.perf_counter()
            try:
                connection.request("GET", f"/bundle/{quote(path)}", headers={"Range": spec} if spec else {})
                response = connection.getresponse()
                body = response.read()
                elapsed = (time.perf_counter() - began) * 1000
                expected = 206 if spec else 200
                problem = None
                if response.status != expected:
                    problem = f"status {response.status}, not {expected}"
                elif spec and response.headers.get("Content-Range") != f"bytes {first}-{last}/{sizes[path]}":
                    problem = f"Content-Range {response.headers.get('Content-Range')!r}"
                elif len(body) != last - first + 1:
                    problem = f"{len(body)} bytes, not {last - first + 1}"
                with lock:
                    counts["requests"] += 1
                    latencies.append(elapsed)
                    if problem is None:
                        counts["served"] += 1
                        counts["bytes"] += len(body)
                        buffers[path][first:last + 1] = body
                if problem:
                    fail(f"{path} {spec}: {problem}")
                if response.will_close:
                    connection.close()  # reconnects on the next request
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    counts["requests"] += 1
                    counts["reconnects"] += 1
                fail(f"{path} {spec}: {exc!r}")
                connection.close()
        connection.close()

    threads = [threading.Thread(target=one_connection, args=(index,), daemon=True) for index in range(connections)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    mismatched = [entry["path"] for entry in files
                  if hashlib.sha256(buffers[entry["path"]]).hexdigest() != entry["sha256"]]
    errors.extend(f"{path}: sha256 of the reassembled file differs from the manifest" for path in mismatched)
    return {"connections": connections, "requests_per_connection": per_connection, "seed": seed, **counts,
            "errors": len(errors), "first_errors": errors[:20], "files": len(files),
            "files_sha256_intact": len(files) - len(mismatched), "wall_s": round(wall, 3),
            "latency_ms": {"p50": round(percentile(latencies, 50) or 0, 2),
                           "p99": round(percentile(latencies, 99) or 0, 2),
                           "max": round(max(latencies, default=0), 2),
                           "mean": round(statistics.fmean(latencies), 2) if latencies else 0},
            "requests_per_s": round(counts["requests"] / wall, 1) if wall else None,
            "mb_per_s": round(counts["bytes"] / wall / 1e6, 1) if wall else None}


def run_load(url: str, manifest_path: Path, connections: int = 200, per_connection: int = 4, seed: int = 0,
             timeout: float = 120.0, threads: Callable[[], int | None] | None = None) -> dict[str, Any]:
    """``client`` in a second process (this file with --client); ``threads`` (the server's thread count) is
    sampled every 5 ms while it runs, its peak reported as ``server_threads_peak``."""
    with tempfile.TemporaryDirectory() as scratch:
        result, log = Path(scratch) / "result.json", Path(scratch) / "client.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--client", url, "--manifest", str(manifest_path),
                   "--connections", str(connections), "--requests-per-connection", str(per_connection),
                   "--seed", str(seed), "--timeout", str(timeout), "--result", str(result)]
        peak = None
        with open(log, "wb") as stderr:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
            try:
                deadline = time.monotonic() + timeout + 60
                while process.poll() is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the load client ran past {timeout + 60:.0f} s")
                    count = threads() if threads else None
                    peak = count if peak is None or (count is not None and count > peak) else peak
                    time.sleep(0.005)
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()
        if process.returncode != 0 or not result.exists():
            raise RuntimeError(f"the load client exited {process.returncode}: {log.read_text()[-2000:]}")
        figures = json.loads(result.read_text())
    figures["client_pid_differs"] = figures.pop("pid") != os.getpid()
    figures["server_threads_peak"] = peak
    return figures


def raw_get(port: int, target: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET whose request target is the exact UTF-8 bytes of ``target`` (no client-side normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                           .encode())
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, response.read()


def allowed_digests(bundle: Path, demo: Path) -> set[str]:
    """sha256 of every file the server may send: the manifest, the files it lists, the demo's non-hidden files,
    each only where it resolves inside its root (as the server requires: a symlink out is not served)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = [bundle / "manifest.json", *(bundle / entry["path"] for entry in manifest["files"])]
    shown = [path for path in demo.rglob("*") if not any(part.startswith(".") for part in path.relative_to(demo).parts)]
    paths = [path for root, found in ((bundle, listed), (demo, shown)) for path in found
             if path.is_file() and path.resolve().is_relative_to(root.resolve())]
    return {hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


def probe_traversal(port: int, allowed: set[str], attempts: tuple[str, ...] = TRAVERSAL_ATTEMPTS) -> dict[str, Any]:
    """Each attempt once; ``leaks`` lists those answered 2xx with a body that is not exactly an allowed file, or
    with a status that is neither a refusal nor a success."""
    results, leaks = [], []
    for attempt in attempts:
        target = attempt.replace("{port}", str(port))
        status, body = raw_get(port, target)
        digest = hashlib.sha256(body).hexdigest()
        ok = status in REFUSALS or (status in (200, 206) and digest in allowed)
        results.append({"target": target, "status": status, "bytes": len(body), "allow_listed_body": digest in allowed})
        if not ok:
            leaks.append(target)
    return {"attempts": len(results), "refused": sum(r["status"] in REFUSALS for r in results),
            "served_allow_listed": sum(r["status"] in (200, 206) for r in results), "leaks": leaks,
            "results": results}


def start_server(bundle: Path, demo: Path, max_connections: int) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "pocketvlm.cli.main", "serve", "--bundle", str(bundle), "--demo-dir", str(demo),
               "--port", "0", "--max-connections", str(max_connections)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([process.stdout], [], [], 300)  # the bundle's sha256 are checked first
    line = process.stdout.readline() if ready else ""  # type: ignore[union-attr]
    if not line.startswith("serving http://127.0.0.1:"):
        process.kill()
        raise RuntimeError(f"pocketvlm serve did not start: {line!r} {process.stderr.read()[-2000:]}")  # type: ignore[union-attr]
    return process, int(line.strip().rstrip("/").rsplit(":", 1)[1])


def threads_of(pid: int) -> Callable[[], int | None]:
    def count() -> int | None:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
    return count


def tool_versions() -> dict[str, str]:
    from pocketvlm.runtime.bench import runtime_versions

    found = {"python": sys.version.split()[0], **runtime_versions()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found["git_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                             text=True, timeout=30, check=True).stdout.strip()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--requests-per-connection", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-connections", type=int, default=32, help="the server's --max-connections")
    parser.add_argument("--timeout", type=float, default=120.0, help="client socket timeout, seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # the second process
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        figures = client(args.client, json.loads(args.manifest.read_text()), args.connections,
                         args.requests_per_connection, args.seed, args.timeout)
        args.result.write_text(json.dumps({**figures, "pid": os.getpid()}))
        return 0
    if args.bundle is None:
        parser.error("--bundle is required")
    from pocketvlm.cli import serve_http
    from pocketvlm.runtime.bench import machine
    from pocketvlm.runtime.manifest import load_bundle

    bundle = load_bundle(args.bundle)
    manifest_path = bundle.path / "manifest.json"
    with tempfile.TemporaryDirectory() as scratch:
        demo = ROOT / "web-demo" / "dist"
        if not (demo / "index.html").is_file():
            demo = Path(scratch)
            (demo / "index.html").write_text("<!doctype html><title>pocketvlm serve load test</title>\n")
        demo_name = demo if demo != Path(scratch) else "a temporary folder with an index.html"
        say(f"serving {bundle.path} (demo {demo}), --max-connections {args.max_connections}")
        server, port = start_server(bundle.path, demo, args.max_connections)
        count_threads = threads_of(server.pid)
        try:
            url = f"http://127.0.0.1:{port}/"
            warm = raw_get(port, "/")[0]  # the handler threads start with serve_forever
            idle_threads = count_threads()
            say(f"load: {args.connections} connections x {args.requests_per_connection} range requests from a "
                "second process")
            load = run_load(url, manifest_path, args.connections, args.requests_per_connection, args.seed,
                            args.timeout, count_threads)
            say(f"load: {load['served']}/{load['requests']} served, {load['errors']} errors, p50 "
                f"{load['latency_ms']['p50']} ms, p99 {load['latency_ms']['p99']} ms, {load['wall_s']} s")
            traversal = probe_traversal(port, allowed_digests(bundle.path, demo))
            say(f"traversal: {traversal['attempts']} attempts, {traversal['refused']} refused, "
                f"{traversal['served_allow_listed']} served an allow-listed file, {len(traversal['leaks'])} leaks")
            still_up = raw_get(port, "/")[0] == 200
        finally:
            server.send_signal(signal.SIGINT)
            try:
                exit_code = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                exit_code = server.wait()
            server_stderr = server.stderr.read() if server.stderr else ""
    results = {
        "benchmark": "serve_load",
        "command": "python benchmarks/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundle": {"path": str(bundle.path), "family": bundle.family, "files": len(bundle.manifest["files"]),
                   "bytes": bundle.total_bytes,
                   "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest()},
        "demo": str(demo_name),
        "server": {"max_connections": args.max_connections, "listen_backlog": serve_http.LISTEN_BACKLOG,
                   "idle_timeout_s": serve_http.IDLE_TIMEOUT, "max_request_line": serve_http.MAX_REQUEST_LINE,
                   "max_header_line": serve_http.MAX_HEADER_LINE, "max_headers": serve_http.MAX_HEADERS,
                   "first_get_status": warm, "threads_idle": idle_threads,
                   "threads_peak_under_load": load.pop("server_threads_peak"), "still_serving_after": still_up,
                   "exit_code_on_sigint": exit_code, "tracebacks_on_stderr": server_stderr.count("Traceback")},
        "load": load, "traversal": traversal, "machine": machine(), "tools": tool_versions(),
        "notes": "latency: from sending a request to its last body byte, client side; a connection's first request "
                 "includes its wait in the listen backlog (connections beyond max_connections are served in turn), "
                 "which is what p99 shows. The client runs on the same machine as the server.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"wrote {args.out}")
    clean = load["errors"] == 0 and not traversal["leaks"] and still_up and exit_code == 0
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
