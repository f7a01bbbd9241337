"""bench/url_server.py: its fault schedule is a pure function of (seed, path) at the stated rates, it binds the
loopback interface only, and clipforge convert over it writes exactly the URLs the schedule serves whole, with
the same shard bytes from 1 worker and 2 (downloads finish out of order: prefetch.py puts shards back in order)."""
import collections
import hashlib
import urllib.parse

import pyarrow.parquet as pq

from bench.url_server import FATES, fate, image_server
from clipforge.data_pipeline.convert import convert

from tests.data_pipeline.convert_inputs import jpeg, write


def test_schedule_is_seeded_and_at_the_stated_rates():
    paths = [f"/{i % 5}/{i}.jpg" for i in range(20000)]
    assert [fate(p, 3) for p in paths[:50]] == [fate(p, 3) for p in paths[:50]]
    assert [fate(p, 3) for p in paths[:50]] != [fate(p, 4) for p in paths[:50]]
    kinds = collections.Counter(fate(p, 0).kind for p in paths)
    previous = 0.0
    for limit, kind in FATES:  # each fault's share within 0.4 points of its configured rate
        assert abs(kinds[kind] / len(paths) - (limit - previous)) < 0.004, (kind, kinds)
        previous = limit
    assert all(0.05 <= fate(p, 0).latency_s <= 0.3 for p in paths[:500])


def test_convert_over_the_server_is_exact_and_worker_independent(tmp_path):
    for i in range(12):
        write(tmp_path / "img" / f"{i}.jpg", jpeg(64, 48, seed=i))
    with image_server(str(tmp_path / "img"), seed=0) as base:
        assert urllib.parse.urlparse(base).hostname == "127.0.0.1"
        urls = [f"{base}/{copy}/{i}.jpg" for copy in range(10) for i in range(12)]
        write(tmp_path / "urls.txt", "".join(f"{url}\tphoto {n}\n" for n, url in enumerate(urls)).encode())
        outs = [tmp_path / f"out{workers}" for workers in (1, 2)]
        for out, workers in zip(outs, (1, 2)):
            convert([str(tmp_path / "urls.txt")], str(out), image_size=32, samples_per_shard=25, workers=workers,
                    retries=0, progress=False)
    rows = [row for path in sorted(outs[0].glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert [row["url"] for row in rows] == urls
    for row in rows:
        assert (row["status"] == "success") == fate(urllib.parse.urlparse(row["url"]).path, 0).succeeds, row
        assert row["status"] == "success" or row["error_message"]
    digests = [{p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("shard-*.tar")} for out in outs]
    assert len(digests[0]) == 5 and digests[0] == digests[1]
