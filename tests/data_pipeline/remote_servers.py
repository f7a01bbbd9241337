"""Real servers on 127.0.0.1 for the remote-shard tests: an S3 API (moto in server mode) and a plain HTTP
file server with fault injection. Both are started and stopped by the tests themselves; nothing leaves the
loopback interface.

    with s3_server(monkeypatch) as endpoint: ...        # fsspec's s3 config points at it, dummy credentials
    upload_dir(endpoint, local_dir, "bucket", "ds")      # -> "s3://bucket/ds"
    with http_server(root) as srv: srv.url("ds/manifest.json"); srv.faults.drop_once("ds/shard-000001.tar", 700)
"""
import contextlib
import os
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Tuple


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(monkeypatch):
    """moto's S3 on a free loopback port; fsspec's own config (what FSSPEC_S3_ENDPOINT_URL sets) and the
    AWS_* environment point s3fs at it, as a user's environment would."""
    import fsspec.config
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto keeps its buckets in the test process, across servers: each test starts from an empty S3
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("FSSPEC_S3_ENDPOINT_URL", endpoint)):
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def upload_dir(endpoint: str, local_dir, bucket: str, prefix: str) -> str:
    """Every file of local_dir to s3://bucket/prefix/ (the bucket made when missing) -> that URL."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=bucket)
    for name in sorted(os.listdir(local_dir)):
        client.upload_file(os.path.join(local_dir, name), bucket, f"{prefix}/{name}")
    return f"s3://{bucket}/{prefix}"


class Faults:
    """What the HTTP server does wrong, per served path (relative to its root); thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._drops: Dict[str, List[int]] = {}   # one-shot: close the connection when the body reaches a byte
        self._broken: Dict[str, int] = {}        # always: no byte from here on is ever sent
        self._unavailable: Dict[str, int] = {}   # the next n requests (HEAD or GET) answer 503
        self._slow: Dict[str, float] = {}        # pause this long halfway through every body
        self.ranges = True                       # False: answer every GET with the whole file (200)
        # (path, first byte, end, outcome) of every GET; a HEAD is recorded with bytes -1, -1
        self.requests: List[Tuple[str, int, int, str]] = []

    def drop_once(self, path: str, offset: int) -> None:
        with self._lock:
            self._drops.setdefault(path, []).append(offset)

    def break_from(self, path: str, offset: int) -> None:
        with self._lock:
            self._broken[path] = offset

    def unavailable(self, path: str, times: int) -> None:
        with self._lock:
            self._unavailable[path] = times

    def slow(self, path: str, pause_s: float) -> None:
        with self._lock:
            self._slow[path] = pause_s

    def plan(self, path: str, start: int, end: int, head: bool = False):
        """-> ("503", None) | ("cut", byte to stop at) | ("slow", pause) | ("ok", None), recorded."""
        with self._lock:
            if self._unavailable.get(path, 0) > 0:
                self._unavailable[path] -= 1
                outcome = ("503", None)
            elif head:
                outcome = ("ok", None)
            elif path in self._broken and self._broken[path] < end:
                outcome = ("cut", max(start, self._broken[path]))
            elif any(start <= d < end for d in self._drops.get(path, [])):
                cut = min(d for d in self._drops[path] if start <= d < end)
                self._drops[path].remove(cut)
                outcome = ("cut", cut)
            elif path in self._slow:
                outcome = ("slow", self._slow[path])
            else:
                outcome = ("ok", None)
            self.requests.append((path, start, end, outcome[0]))
            return outcome


class _Handler(BaseHTTPRequestHandler):
    def _target(self):
        rel = self.path.split("?", 1)[0].lstrip("/")
        full = os.path.realpath(os.path.join(self.server.root, rel))
        if not full.startswith(self.server.root + os.sep) or not os.path.isfile(full):
            self.send_error(404)
            return None, None
        return rel, full

    def do_HEAD(self):
        rel, full = self._target()
        if rel is None:
            return
        if self.server.faults.plan(rel, -1, -1, head=True)[0] == "503":
            self.send_error(503, "try again")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(full)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self):
        rel, full = self._target()
        if rel is None:
            return
        size = os.path.getsize(full)
        start, end, status = 0, size, 200
        spec = self.headers.get("Range", "")
        if spec.startswith("bytes=") and self.server.faults.ranges:
            first, _, last = spec[len("bytes="):].partition("-")
            start, end, status = int(first or 0), min(size, int(last) + 1 if last else size), 206
        kind, arg = self.server.faults.plan(rel, start, end)
        if kind == "503":
            self.send_error(503, "try again")
            return
        with open(full, "rb") as f:
            f.seek(start)
            body = f.read(end - start)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if kind == "cut":  # the promised length is never reached: the client sees a broken connection
            self.wfile.write(body[:arg - start])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind == "slow":
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            time.sleep(arg)
            body = body[len(body) // 2:]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def url(self, rel: str = "") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{rel}"


@contextlib.contextmanager
def http_server(root):
    server = _Server(("127.0.0.1", 0), _Handler)
    server.root, server.faults = os.path.realpath(root), Faults()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
