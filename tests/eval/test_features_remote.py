"""The linear probe's feature cache is keyed on remote shards too: the same key while the served files stay the
same, a new one when a shard changes (its size / ETag), as for local files (path, size, mtime)."""
import shutil

from clipforge.eval.features import data_fingerprint
from clipforge.eval.sources import open_source
from tests.data_pipeline.remote_servers import http_server


def test_feature_cache_key_of_served_shards_follows_their_content(eval_shards, tmp_path):
    shutil.copytree(eval_shards / "shards", tmp_path / "shards")
    with http_server(tmp_path) as server:
        key = data_fingerprint(open_source(server.url("shards"), labels=True), precision="fp32")
        assert data_fingerprint(open_source(server.url("shards"), labels=True), precision="fp32") == key
        with open(tmp_path / "shards" / "shard-000001.tar", "ab") as f:
            f.write(b"\0" * 512)  # a shard that changed on the server
        assert data_fingerprint(open_source(server.url("shards"), labels=True), precision="fp32") != key
