"""Shards over plain HTTP from a loopback server that misbehaves on purpose (connection dropped mid-shard,
503 then OK, slow bodies, a shard that stays broken): retried reads resume inside the shard, every sample
is read exactly once per epoch, and what is finally skipped is counted with the shard URL and byte offset."""
import os

import pytest
import torch

from clipforge.data_pipeline import remote
from clipforge.errors import UserError
from tests.data_pipeline.conftest import write_dataset
from tests.data_pipeline.remote_servers import http_server
from tests.data_pipeline.test_remote_s3 import batches
from tests.data_pipeline.test_stream_loader import make_loader

BLOCK = 4096  # the sequential readers' request size, made small so that a 30 kB shard takes several requests


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPFORGE_READ_BACKOFF_S", "0.01")
    monkeypatch.setattr(remote, "BLOCK", BLOCK)
    keys = write_dataset(tmp_path / "ds", num_shards=4, per_shard=10)
    with http_server(tmp_path) as server:
        yield server, keys, tmp_path / "ds"


def shard_size(local, i: int) -> int:
    return os.path.getsize(local / f"shard-00000{i}.tar")


def test_a_dropped_connection_resumes_inside_the_shard(served):
    server, _, local = served
    path, size = "ds/shard-000000.tar", shard_size(local, 0)
    for offset in (size // 3, 2 * size // 3):
        server.faults.drop_once(path, offset)
    with remote.RemoteFile(server.url(path)) as f:
        assert f.size == size  # its HEAD
        server.faults.unavailable(path, 1)  # the first ranged GET answers 503
        assert f.read() == (local / "shard-000000.tar").read_bytes()
    gets = [(start, end, outcome) for p, start, end, outcome in server.faults.requests if p == path and start >= 0]
    assert [o for _, _, o in gets].count("cut") == 2 and gets[0][2] == "503"
    for i, (start, end, outcome) in enumerate(gets):
        if outcome == "cut":  # retried from the first byte not held, never from the start of the shard
            assert start > 0 and gets[i + 1] == (start, end, "ok")
    assert sorted({(s, e) for s, e, o in gets if o == "ok"}) == [(b, min(b + BLOCK, size)) for b in range(0, size, BLOCK)]


def test_faulty_server_still_gives_every_sample_once_per_epoch(served):
    server, keys, local = served
    server.faults.drop_once("ds/shard-000000.tar", shard_size(local, 0) // 2)
    server.faults.drop_once("ds/shard-000000.tar", 3 * shard_size(local, 0) // 4)
    server.faults.unavailable("ds/shard-000001.tar", 3)  # the loader's HEAD, its GET fallback, the HEAD again
    server.faults.slow("ds/shard-000002.tar", 0.05)
    server.faults.drop_once("ds/shard-000003.tar", shard_size(local, 3) - 100)  # in the shard's tail
    reference = batches([make_loader([(local, 1)])], 10)
    loaders = [make_loader([(server.url("ds"), 1)], rank=r, world=2, workers=2) for r in range(2)]
    got = batches(loaders, 10)
    for (ref_keys, ref_images, _), (got_keys, images, _) in zip(reference, got):
        assert got_keys == ref_keys and torch.equal(images, ref_images)
    for epoch in range(2):
        seen = [k for step in got[epoch * 5:(epoch + 1) * 5] for k in step[0]]
        assert sorted(seen) == keys
    assert all(loader.counters == {} and loader.failed_reads == {} for loader in loaders)
    outcomes = {o for *_, o in server.faults.requests}
    assert {"cut", "503", "slow"} <= outcomes


def test_a_shard_that_stays_broken_is_counted_as_skipped_with_its_offset(served, monkeypatch, capsys):
    monkeypatch.setenv("CLIPFORGE_READ_TRIES", "3")
    server, keys, local = served
    broken_at = shard_size(local, 1) // 2
    server.faults.break_from("ds/shard-000001.tar", broken_at)
    loader = make_loader([(server.url("ds"), 1)], workers=1)
    seen = [k for batch in loader for k in batch["keys"]]  # one epoch
    assert len(seen) == len(set(seen))
    shard1 = keys[10:20]
    read1 = [k for k in shard1 if k in seen]
    assert set(seen) == set(keys[:10] + read1 + keys[20:])
    assert 0 < len(read1) < 10 and read1 == shard1[:len(read1)]  # what was read is the part before the break
    skipped = 40 - len(seen)
    assert loader.counters == {"read_error": skipped}
    failed_block = broken_at // BLOCK * BLOCK  # the first byte the header scan could not read
    url = server.url("ds/shard-000001.tar")
    assert loader.failed_reads == {f"{url}@{failed_block}": skipped}
    assert loader.state_dict()["failed_reads"] == loader.failed_reads
    assert f"skipping samples of {url}: the read at byte {failed_block} failed after its retries" in capsys.readouterr().err
    tries = [r for r in server.faults.requests if r[0] == "ds/shard-000001.tar" and r[1] == failed_block]
    assert [o for *_, o in tries] == ["cut"] * 3


def test_a_server_that_ignores_ranges_is_refused_in_one_line(served):
    server, _, _ = served
    server.faults.ranges = False
    loader = make_loader([(server.url("ds"), 1)])
    with pytest.raises(UserError, match=r"shard-00000\d\.tar: the server ignores ranged reads .* honours HTTP Range"):
        next(iter(loader))
