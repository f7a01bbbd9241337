"""A loopback image server with a realistic, deterministic fault schedule (bench/convert_urls.py serves both
tools from it).

    with image_server(folder, seed=0) as base:      # http://127.0.0.1:PORT
        urls = [f"{base}/{copy}/{name}" for ...]     # GET /<anything>/<file name in folder>
        fate(path, seed)                             # what the server does for that path

Each path's answer is a pure function of (seed, path), never of timing or request order, so both tools meet the
same schedule: a first-byte latency drawn uniformly from 50-300 ms (a far web host: a LAION crawl sees roughly this),
then, by a second draw, 2 % `404`, 1 % `500`, 1 % a body cut off halfway (connection closed early), 3 % a slow
body (8 parts spread over 1-2 s, inside the clients' timeout), and the file otherwise. Failures are permanent, so
retries cannot change a tool's success rate. Binds 127.0.0.1 only; HTTP/1.1 keep-alive for clients that reuse
connections (loopback connection set-up costs no round trip here: reuse saves only CPU, not latency).
"""
import contextlib
import hashlib
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, NamedTuple

LATENCY_MS = (50, 300)
# cumulative fractions of the second draw: below 0.02 -> 404, below 0.03 -> 500, ...
FATES = ((0.02, "not_found"), (0.03, "server_error"), (0.04, "truncated"), (0.07, "slow_body"))
SLOW_BODY_S = (1.0, 2.0)
SLOW_PARTS = 8


class Fate(NamedTuple):
    latency_s: float
    kind: str          # ok | slow_body | not_found | server_error | truncated
    body_s: float      # slow_body: seconds over which the body trickles

    @property
    def succeeds(self) -> bool:
        return self.kind in ("ok", "slow_body")


def _draws(seed: int, path: str):
    digest = hashlib.sha256(f"{seed}\0{path}".encode()).digest()
    return [int.from_bytes(digest[i:i + 8], "big") / 2**64 for i in (0, 8, 16)]


def fate(path: str, seed: int) -> Fate:
    """What the server does for `path` under `seed` (the URL path only: host and port change per run)."""
    latency, kind_draw, body = _draws(seed, path)
    kind = next((name for limit, name in FATES if kind_draw < limit), "ok")
    low, high = LATENCY_MS
    return Fate((low + (high - low) * latency) / 1000, kind,
                SLOW_BODY_S[0] + (SLOW_BODY_S[1] - SLOW_BODY_S[0]) * body if kind == "slow_body" else 0.0)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # img2dataset opens up to processes x 256 connections at once; the default backlog of 5 would drop SYNs
    # and add the kernel's 1 s retransmit to some requests.
    request_queue_size = 4096


def _handler(folder: str, seed: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            plan = fate(path, seed)
            time.sleep(plan.latency_s)
            file = os.path.join(folder, os.path.basename(path))
            if plan.kind == "not_found" or not os.path.isfile(file):
                return self._empty(404)
            if plan.kind == "server_error":
                return self._empty(500)
            with open(file, "rb") as handle:
                body = handle.read()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                if plan.kind == "truncated":
                    self.wfile.write(body[:len(body) // 2])
                    self.close_connection = True
                elif plan.kind == "slow_body":
                    step = -(-len(body) // SLOW_PARTS)
                    for start in range(0, len(body), step):
                        time.sleep(plan.body_s / SLOW_PARTS)
                        self.wfile.write(body[start:start + step])
                        self.wfile.flush()
                else:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # a client that gave up
                self.close_connection = True

        def _empty(self, status: int):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


@contextlib.contextmanager
def image_server(folder: str, seed: int = 0) -> Iterator[str]:
    """Serve `folder`'s files on 127.0.0.1 (a free port) under the fault schedule; yields the base URL."""
    server = _Server(("127.0.0.1", 0), _handler(str(folder), seed))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
