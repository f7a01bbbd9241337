"""`clipforge eval --data` on remote shards: in S3 (moto's S3 API on 127.0.0.1) and behind a plain HTTP
server (its manifest URL), the same numbers as the local copy; a shard that stays unreadable stops the
eval with one line naming its URL and byte offset."""
import json

from tests.data_pipeline.remote_servers import http_server, s3_server, upload_dir
from tests.eval.test_cli import run_cli


def test_eval_on_s3_and_http_shards_equals_the_local_eval(eval_shards, tiny_model, tmp_path, capsys, monkeypatch):
    root, _ = tiny_model
    common = ["--model", root / "export", "--task", "retrieval", "--recall-k", "1,5"]
    rc, _, err = run_cli(common + ["--data", eval_shards / "shards", "--out", tmp_path / "local.json"], capsys)
    assert rc == 0, err
    local = json.loads((tmp_path / "local.json").read_text())
    with s3_server(monkeypatch) as endpoint:
        url = upload_dir(endpoint, eval_shards / "shards", "evalset", "shards")
        rc, _, err = run_cli(common + ["--data", url, "--out", tmp_path / "s3.json"], capsys)
        assert rc == 0, err
    with http_server(eval_shards) as server:
        rc, _, err = run_cli(common + ["--data", server.url("shards/manifest.json"), "--out", tmp_path / "http.json",
                                       "--report", tmp_path / "http.md", "--report-examples", "2"], capsys)
        assert rc == 0, err
    for name in ("s3.json", "http.json"):
        result = json.loads((tmp_path / name).read_text())
        assert result["dataset"] == "shards" and result["metrics"] == local["metrics"]
        assert result["clipforge"]["counts"] == local["clipforge"]["counts"] == {"images": 40, "captions": 80}
    assert "![" in (tmp_path / "http.md").read_text()  # thumbnails read from the served shards


def test_eval_names_the_url_and_byte_of_a_shard_that_stays_unreadable(eval_shards, tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("CLIPFORGE_READ_TRIES", "2")
    monkeypatch.setenv("CLIPFORGE_READ_BACKOFF_S", "0.01")
    root, _ = tiny_model
    with http_server(eval_shards) as server:
        server.faults.break_from("shards/shard-000001.tar", 0)
        rc, _, err = run_cli(["--model", root / "export", "--task", "retrieval", "--data", server.url("shards")],
                             capsys)
    assert rc == 2
    assert f"{server.url('shards/shard-000001.tar')}: read failed at byte 0 after 2 tries" in err
