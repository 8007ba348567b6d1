"""pocketvlm serve --bundle DIR [--port N] [--host H] [--demo-dir PATH]: the web demo at / and the bundle at /bundle/.

Standard library only (``http.server``), and nothing of the exporter: the bundle is checked with the runtime's
``load_bundle`` (every sha256) before the socket opens. What is served is an allow-list, never a directory walk:
under ``/bundle/`` only ``manifest.json`` and the files the manifest lists; under ``/`` only regular files inside the
demo directory. Dotfiles, ``..``, encoded separators, empty segments and symlinks that resolve outside their root are
404; methods other than GET and HEAD are 405. Every response carries the cross-origin isolation headers that wasm
threads (``SharedArrayBuffer``) need.

Bounded: a fixed pool of ``--max-connections`` handler threads; the accept loop takes a connection off the listen
backlog only when a thread is free, so more connections wait in the kernel's queue and are served in turn (never
refused, never a thread each). A request's head (request line and headers) must arrive within the idle timeout and
within the size bounds (414 for a request line over 8 KiB, 431 for more than 64 headers or a header line over 8 KiB);
a request body is never read (the connection is closed after the response). The handler and the server are in
``serve_http``; this module is the command: the allow-list, the checks before the socket opens, the bind.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from http.server import HTTPServer
from pathlib import Path
from types import FrameType

import pocketvlm.cli
from pocketvlm.cli.serve_http import DEFAULT_MAX_CONNECTIONS, BoundedHTTPServer, DemoHandler, is_loopback
from pocketvlm.runtime.errors import InputError
from pocketvlm.runtime.manifest import MANIFEST_NAME, Bundle, load_bundle

BUILD_FIX = "npm --prefix web-demo ci && npm --prefix web-demo run build"
DEFAULT_DEMO_DIR = Path(pocketvlm.cli.__file__).resolve().parents[1] / "web-demo" / "dist"


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
    optional.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                          help=f"connections served at once (default {DEFAULT_MAX_CONNECTIONS}); more wait their turn")
    optional.add_argument("--verbose", action="store_true", help="one line per request on stderr")


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


def find_demo_dir(demo_dir: Path | None) -> Path:
    where = Path(demo_dir) if demo_dir is not None else DEFAULT_DEMO_DIR
    if not (where / "index.html").is_file():
        fix = (f"build it with `{BUILD_FIX}`" if demo_dir is None
               else f"pass --demo-dir a built web demo (`{BUILD_FIX}` builds web-demo/dist)")
        raise InputError(f"no built web demo: {where} has no index.html", fix)
    return where.resolve()


def make_server(bundle: Bundle, demo_dir: Path, host: str = "127.0.0.1", port: int = 0, verbose: bool = False,
                max_connections: int = DEFAULT_MAX_CONNECTIONS) -> BoundedHTTPServer:
    """A bound (not yet serving) server for ``bundle`` and ``demo_dir``; ``serve_forever`` runs it."""
    handler = type("BoundDemoHandler", (DemoHandler,), {
        "bundle_files": bundle_allow_list(bundle), "bundle_root": bundle.path.resolve(),
        "demo_root": demo_dir.resolve(), "loopback_only": is_loopback(host), "verbose": verbose})
    server_class = BoundedHTTPServer
    if ":" in host:
        server_class = type("BoundedHTTPServer6", (BoundedHTTPServer,), {"address_family": socket.AF_INET6})
    try:
        return server_class((host.strip("[]"), port), handler, max_connections)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                         "pick another --port (--port 0 takes a free one) or another --host") from exc


def url(server: HTTPServer, host: str) -> str:
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
    if args.max_connections < 1:
        raise InputError(f"--max-connections {args.max_connections} is below 1", "pass 1 or more (default 32)")
    demo_dir = find_demo_dir(args.demo_dir)
    bundle = load_bundle(args.bundle)  # every sha256, before anything is served
    host = args.host or "127.0.0.1"
    server = make_server(bundle, demo_dir, host, args.port, args.verbose, max_connections=args.max_connections)
    print(f"serving {url(server, host)}", flush=True)
    files = len(bundle_allow_list(bundle))
    print(f"bundle {bundle.path.resolve()} ({bundle.family}, {files} files, {bundle.total_bytes / 1e6:.1f} MB) at "
          f"/bundle/; demo {demo_dir} at /; {args.max_connections} connections at a time", flush=True)
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
