"""URL inputs against a real HTTP server on 127.0.0.1: 200s, 404s, slow responses, redirects, a flaky 503."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipforge.data_pipeline.convert import convert

from .convert_inputs import jpeg, read_shards, write


class Handler(BaseHTTPRequestHandler):
    images = {f"/img/{i}.jpg": jpeg(40, 30, seed=i) for i in range(4)}
    agents, hits, first_start = [], {}, {}

    def do_GET(self):
        Handler.agents.append(self.headers.get("User-Agent", ""))
        Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        Handler.first_start.setdefault(self.path, time.monotonic())
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", "/img/" + self.path.rsplit("/", 1)[-1] + ".jpg")
            self.end_headers()
            return
        if self.path == "/slow.jpg":
            time.sleep(1.5)  # longer than the client's timeout
        if self.path == "/trickle.jpg":  # headers at once, then the body a few bytes at a time
            body = self.images["/img/1.jpg"]
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for start in range(0, len(body), len(body) // 8):
                    self.wfile.write(body[start:start + len(body) // 8])
                    self.wfile.flush()
                    time.sleep(0.15)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if self.path == "/cut.jpg":  # a body cut off: the connection closes before Content-Length bytes came
            body = self.images["/img/1.jpg"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
            return
        if self.path == "/flaky.jpg" and Handler.hits[self.path] == 1:
            self.send_error(503)
            return
        body = self.images.get(self.path, self.images["/img/3.jpg"] if self.path in ("/slow.jpg", "/flaky.jpg") else None)
        if body is None:
            self.send_error(404)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on /slow.jpg
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


CASES = [("/img/0.jpg", "success", ""), ("/missing.jpg", "failed_to_download", "http 404"),
         ("/slow.jpg", "failed_to_download", "timeout"), ("/redirect/1", "success", ""),
         ("/flaky.jpg", "success", ""), ("/img/2.jpg", "success", ""),
         ("/trickle.jpg", "failed_to_download", "server trickles"),
         ("/cut.jpg", "failed_to_download", "connection broken")]


def _check(out, base):
    rows = pq.read_table(out / "shard-000000.parquet").to_pylist()
    samples = read_shards(out)
    assert [row["source"] for row in rows] == [base + path for path, _, _ in CASES]
    for row, (path, status, words) in zip(rows, CASES):
        assert row["status"] == status and words in row["error_message"], (path, row["error_message"])
        assert (row["key"] in samples) == (status == "success")
    return rows, samples


def test_url_list_downloads_concurrently_and_records_every_status(server, tmp_path):
    Handler.hits.clear()
    Handler.first_start.clear()
    lines = "".join(f"{server}{path}\tphoto {i}\n" for i, (path, _, _) in enumerate(CASES))
    write(tmp_path / "urls.txt", lines.encode())
    summary = convert([str(tmp_path / "urls.txt")], str(tmp_path / "out"), image_size=16, timeout=0.5,
                      retries=1, progress=False)
    rows, samples = _check(tmp_path / "out", server)
    assert summary["written"] == 4 and summary["rejected"] == {"failed_to_download": 4}
    assert "after 2 tries" in rows[2]["error_message"] and Handler.hits["/missing.jpg"] == 1  # no retry on 404
    assert Handler.hits["/flaky.jpg"] == 2  # 503 retried once
    assert all(agent.startswith("clipforge/") for agent in Handler.agents)
    assert json.loads(samples[rows[3]["key"]]["json"])["source"] == server + "/redirect/1"
    # The items listed after slow.jpg are fetched alongside it: the first of them is asked for before the
    # client gives up on slow.jpg's first try (0.5 s timeout); one at a time, it would come after both
    # tries (>= 1 s). An ordering of requests, not a wall-time budget.
    after_slow = [path for path, _, _ in CASES[CASES.index(("/slow.jpg", "failed_to_download", "timeout")) + 1:]]
    assert min(Handler.first_start[path] for path in after_slow) < Handler.first_start["/slow.jpg"] + 0.5


def test_laion_style_parquet_of_urls(server, tmp_path):
    Handler.hits.clear()
    table = pa.table({"URL": [server + path for path, _, _ in CASES],
                      "TEXT": [f"photo {i}" for i in range(len(CASES))], "similarity": [0.3] * len(CASES)})
    pq.write_table(table, tmp_path / "laion.parquet")
    summary = convert([str(tmp_path / "laion.parquet")], str(tmp_path / "out"), image_size=16, timeout=0.5,
                      retries=1, keep_cols=["similarity"], progress=False)
    rows, samples = _check(tmp_path / "out", server)
    assert summary["written"] == 4
    assert json.loads(samples[rows[0]["key"]]["json"])["similarity"] == 0.3


def test_a_refused_connection_is_recorded_as_cannot_connect(tmp_path):
    import socket
    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write(tmp_path / "urls.txt", f"http://127.0.0.1:{port}/a.jpg\ta photo\n".encode())
    summary = convert([str(tmp_path / "urls.txt")], str(tmp_path / "out"), image_size=16, timeout=2, retries=0,
                      progress=False)
    row = pq.read_table(tmp_path / "out" / "shard-000000.parquet").to_pylist()[0]
    assert summary["rejected"] == {"failed_to_download": 1}
    assert row["error_message"].startswith(f"cannot connect: http://127.0.0.1:{port}/a.jpg: "), row["error_message"]


def test_file_urls(tmp_path):
    path = write(tmp_path / "a b.jpg", jpeg(40, 30, seed=1))
    write(tmp_path / "urls.txt", f"{(tmp_path / 'a b.jpg').as_uri()}\ta local file\n".encode())
    summary = convert([str(tmp_path / "urls.txt")], str(tmp_path / "out"), image_size=16, progress=False)
    assert summary["written"] == 1 and path.endswith("a b.jpg")
