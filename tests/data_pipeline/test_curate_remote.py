"""clipforge curate reading its input from S3 (moto's S3 API on 127.0.0.1): the same output, byte for byte,
and the same fates as curating the local copy; the manifest records the input's URL and manifest hash."""
import hashlib
import json
import os

from clipforge.data_pipeline.curate.cli import main

from .curate_inputs import converted, fates
from .remote_servers import s3_server, upload_dir


def test_curate_an_s3_dataset_as_its_local_copy(tmp_path, monkeypatch, capsys):
    local = converted(tmp_path)
    flags = ["--min-words", "3", "--samples-per-shard", "2", "--no-progress"]
    assert main([local, "--out", str(tmp_path / "from-local")] + flags) == 0
    with s3_server(monkeypatch) as endpoint:
        url = upload_dir(endpoint, local, "curate", "shards")
        assert main([url, "--out", str(tmp_path / "from-s3")] + flags) == 0
    printed = capsys.readouterr().out
    assert printed.count("8 input samples -> 6 kept, 2 removed; 3 shards") == 2
    assert fates(tmp_path / "from-s3") == fates(tmp_path / "from-local")
    tars = sorted(n for n in os.listdir(tmp_path / "from-local") if n.endswith(".tar"))
    assert tars and all((tmp_path / "from-s3" / n).read_bytes() == (tmp_path / "from-local" / n).read_bytes()
                        for n in tars)
    created = json.loads((tmp_path / "from-s3" / "manifest.json").read_text())["created_by"]["input"]
    assert created["path"] == url
    assert created["manifest_sha256"] == hashlib.sha256((tmp_path / "shards" / "manifest.json").read_bytes()).hexdigest()
