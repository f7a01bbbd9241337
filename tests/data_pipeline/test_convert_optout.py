"""Site opt-outs of URL inputs against a real HTTP server on 127.0.0.1: X-Robots-Tag headers (on by default),
robots.txt (--respect-robots), the --disallow-optout switch, and counts that add up."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline.convert.cli import main
from clipforge.data_pipeline.convert.options import ConvertError

from .convert_inputs import jpeg, read_shards, write

# path -> X-Robots-Tag header lines sent with the image (each a separate header line)
HEADERS = {
    "/plain.jpg": [],
    "/noai.jpg": ["noai"],
    "/noimageai.jpg": ["NoImageAI"],                       # case-insensitive
    "/noindex.jpg": ["nofollow, noindex"],                 # comma-separated
    "/noimageindex.jpg": ["noarchive", "noimageindex"],    # the second of two header lines
    "/ours.jpg": ["clipforge: noai"],                      # scoped to our user agent
    "/peer.jpg": ["img2dataset: noai, noimageai"],         # scoped to img2dataset's
    "/other-bot.jpg": ["googlebot: noindex"],              # another crawler's business: written
    "/harmless.jpg": ["nofollow, max-image-preview: large"],
    "/value-colon.jpg": ["noai, unavailable_after: 25 Jun 2030 15:00:00 PST"],
    "/private/secret.jpg": [],                             # robots.txt disallows /private/
}
OPTED_OUT = {"/noai.jpg": "noai", "/noimageai.jpg": "noimageai", "/noindex.jpg": "noindex",
             "/noimageindex.jpg": "noimageindex", "/ours.jpg": "noai", "/peer.jpg": "noai",
             "/value-colon.jpg": "noai"}
ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"


def make_handler(robots_status: int):
    class Handler(BaseHTTPRequestHandler):
        body = jpeg(40, 30, seed=3)
        robots_hits = []

        def do_GET(self):
            if self.path == "/robots.txt":
                Handler.robots_hits.append(self.path)
                self.send_response(robots_status)
                self.end_headers()
                if robots_status == 200:
                    self.wfile.write(ROBOTS_TXT.encode())
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(self.body)))
            for value in HEADERS[self.path]:
                self.send_header("X-Robots-Tag", value)
            self.end_headers()
            self.wfile.write(self.body)

        def log_message(self, *args):
            pass

    return Handler


def serve(robots_status: int = 200):
    """A fresh server (own port, so robots.txt is read anew) answering robots.txt with `robots_status`."""
    handler = make_handler(robots_status)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, handler, f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def server():
    servers = []

    def start(robots_status: int = 200):
        servers.append(serve(robots_status))
        return servers[-1][1], servers[-1][2]

    yield start
    for httpd, _, _ in servers:
        httpd.shutdown()
        httpd.server_close()


def _convert(tmp_path, base, **options):
    lines = "".join(f"{base}{path}\tphoto of {path}\n" for path in HEADERS)
    write(tmp_path / "urls.txt", lines.encode())
    summary = convert([str(tmp_path / "urls.txt")], str(tmp_path / "out"), image_size=16, progress=False,
                      threads=4, **options)
    rows = {row["source"][len(base):]: row for row in pq.read_table(tmp_path / "out" / "shard-000000.parquet").to_pylist()}
    return summary, rows, read_shards(tmp_path / "out")


def test_every_optout_header_variant_is_recorded_not_written(server, tmp_path):
    _, base = server()
    summary, rows, samples = _convert(tmp_path, base)
    for path, row in rows.items():
        if path in OPTED_OUT:
            assert row["status"] == "opted_out", path
            assert f"X-Robots-Tag: {OPTED_OUT[path]}" in row["error_message"] and row["key"] not in samples
        else:
            assert row["status"] == "success" and row["key"] in samples, (path, row["error_message"])
    assert summary["written"] == len(HEADERS) - len(OPTED_OUT)
    assert summary["rejected"] == {"opted_out": len(OPTED_OUT)}
    assert summary["reasons"] == {"opted_out: X-Robots-Tag noai": 4, "opted_out: X-Robots-Tag noimageai": 1,
                                  "opted_out: X-Robots-Tag noindex": 1, "opted_out: X-Robots-Tag noimageindex": 1}
    assert summary["written"] + sum(summary["rejected"].values()) == summary["input_items"] == len(HEADERS)
    assert "robots.txt not checked" in summary["opt_outs"]


def test_disallow_optout_writes_them_and_the_summary_says_it_was_off(server, tmp_path, capsys):
    _, base = server()
    write(tmp_path / "urls.txt", "".join(f"{base}{path}\tphoto\n" for path in HEADERS).encode())
    assert main([str(tmp_path / "urls.txt"), "--out", str(tmp_path / "out"), "--image-size", "16",
                 "--no-progress", "--disallow-optout"]) == 0
    printed = capsys.readouterr().out
    assert "opt-outs: X-Robots-Tag opt-outs NOT honoured (--disallow-optout)" in printed
    assert f"{len(HEADERS)} input items -> {len(HEADERS)} written, 0 rejected" in printed


def test_respect_robots_reads_robots_txt_once_per_host(server, tmp_path):
    handler, base = server()
    summary, rows, samples = _convert(tmp_path, base, respect_robots=True, disallow_optout=True)
    assert rows["/private/secret.jpg"]["status"] == "opted_out"
    assert "disallowed by " + base + "/robots.txt" in rows["/private/secret.jpg"]["error_message"]
    assert summary["rejected"] == {"opted_out": 1} and summary["reasons"] == {"opted_out: robots.txt": 1}
    assert summary["written"] == len(HEADERS) - 1 == len(samples)
    assert handler.robots_hits == ["/robots.txt"]  # 11 URLs of one host, 4 threads: one read
    assert "robots.txt checked (--respect-robots)" in summary["opt_outs"]


def test_robots_txt_is_not_read_unless_asked(server, tmp_path):
    handler, base = server()
    summary, rows, _ = _convert(tmp_path, base, disallow_optout=True)
    assert rows["/private/secret.jpg"]["status"] == "success" and handler.robots_hits == []


@pytest.mark.parametrize("status, written", [(404, len(HEADERS)), (403, 0), (503, 0)])
def test_missing_robots_txt_allows_and_an_unreachable_one_disallows(server, tmp_path, status, written):
    """RFC 9309: no robots.txt (4xx) allows everything; 401/403 and 5xx count as disallowing everything."""
    _, base = server(robots_status=status)
    summary, rows, _ = _convert(tmp_path, base, respect_robots=True, disallow_optout=True)
    assert summary["written"] == written
    assert summary["written"] + summary["rejected"].get("opted_out", 0) == len(HEADERS)
    if not written:
        assert f"answered {status}, so every path counts as disallowed" in rows["/plain.jpg"]["error_message"]


def test_local_inputs_have_no_optout_line(tmp_path):
    write(tmp_path / "a.jpg", jpeg(40, 30, seed=1))
    write(tmp_path / "urls.txt", f"{(tmp_path / 'a.jpg').as_uri()}\ta local file\n".encode())
    summary = convert([str(tmp_path / "urls.txt")], str(tmp_path / "out"), image_size=16, progress=False)
    assert summary["written"] == 1 and summary["opt_outs"] is None


def test_a_conversion_begun_before_opt_outs_resumes_only_as_it_began(server, tmp_path):
    """Its plan lacks the opt-out options (its shards were written without the check) and holds --caption-col as
    one string: resuming it as it began works, resuming it with the check on is refused, naming the option."""
    _, base = server()
    write(tmp_path / "urls.txt", f"{base}/harmless.jpg\ta downloaded photo\n".encode())
    out = tmp_path / "out"
    convert([str(tmp_path / "urls.txt")], str(out), image_size=16, progress=False, caption_col="caption")
    plan = json.loads((out / "convert_plan.json").read_text())
    for key in ("disallow_optout", "respect_robots"):
        del plan["options"][key]
    plan["options"]["caption_col"] = "caption"
    (out / "convert_plan.json").write_text(json.dumps(plan))
    with pytest.raises(ConvertError, match="option\\(s\\) disallow_optout differ"):
        convert([str(tmp_path / "urls.txt")], str(out), image_size=16, progress=False, caption_col="caption")
    summary = convert([str(tmp_path / "urls.txt")], str(out), image_size=16, progress=False, caption_col="caption",
                      disallow_optout=True)
    assert summary["skipped_shards"] == 1 and summary["written"] == 1
    assert json.loads((out / "manifest.json").read_text())["caption_sources"] == ["txt"]


def test_a_local_conversion_begun_before_opt_outs_resumes_as_it_is(tmp_path):
    """Opt-outs cannot change what a conversion of local files writes: its plan from before the options
    resumes with today's defaults (`make demo` re-run over an older runs/demo)."""
    write(tmp_path / "a.jpg", jpeg(40, 30, seed=1))
    write(tmp_path / "urls.txt", f"{(tmp_path / 'a.jpg').as_uri()}\ta local file\n".encode())
    out = tmp_path / "out"
    convert([str(tmp_path / "urls.txt")], str(out), image_size=16, progress=False)
    plan = json.loads((out / "convert_plan.json").read_text())
    assert not {"disallow_optout", "respect_robots"} & set(plan["options"])
    plan["options"]["caption_col"] = None  # as a plan of before repeatable --caption-col held it
    (out / "convert_plan.json").write_text(json.dumps(plan))
    summary = convert([str(tmp_path / "urls.txt")], str(out), image_size=16, progress=False)
    assert summary["skipped_shards"] == 1
