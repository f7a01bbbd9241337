"""clipforge verify on a shard dataset's URL: in S3 (moto's S3 API on 127.0.0.1) a clean conversion passes and
damage is named as for a local folder; over a loopback HTTP server a dropped connection is retried, and a shard
that stays unreadable is a problem naming its byte while the other shards are still verified."""
from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline.verify import main

from .convert_inputs import caption_table
from .remote_servers import http_server, s3_server, upload_dir


def converted(tmp_path):
    table = caption_table(tmp_path / "raw", count=6, captions_per_image=2)
    convert([table], str(tmp_path / "ds"), image_size=24, samples_per_shard=3, progress=False)
    return tmp_path / "ds"


def test_verify_a_dataset_in_s3(tmp_path, monkeypatch, capsys):
    local = converted(tmp_path)
    with s3_server(monkeypatch) as endpoint:
        url = upload_dir(endpoint, local, "verify", "ds")
        assert main([url, "--no-progress"]) == 0
        assert "2 shards, 6 samples, 0 problem(s): OK" in capsys.readouterr().out
        data = bytearray((local / "shard-000001.tar").read_bytes())
        data[700] ^= 0xFF
        (local / "shard-000001.tar").write_bytes(bytes(data))
        upload_dir(endpoint, local, "verify", "ds")
        assert main([url, "--no-progress"]) == 1
        assert "PROBLEM shard-000001.tar:" in capsys.readouterr().out


def test_verify_over_http_retries_and_names_a_shard_that_stays_unreadable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPFORGE_READ_TRIES", "2")
    monkeypatch.setenv("CLIPFORGE_READ_BACKOFF_S", "0.01")
    converted(tmp_path)
    with http_server(tmp_path) as server:
        server.faults.drop_once("ds/shard-000000.tar", 1000)
        assert main([server.url("ds"), "--no-progress"]) == 0
        server.faults.break_from("ds/shard-000001.tar", 0)
        assert main([server.url("ds"), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM shard-000001.tar: {server.url('ds/shard-000001.tar')}: read failed at byte 0 after 2 tries" in out
    assert "2 shards, 3 samples, 2 problem(s)" in out  # shard 0 verified; shard 1 unread, so the total is short
