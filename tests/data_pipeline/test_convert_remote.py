"""`clipforge convert --out s3://...` against moto's S3 API on 127.0.0.1: the store ends up with the files a
local --out holds (no temporary keys left), the loader reads the same samples back, and a re-run after an
interrupted upload sends only what the store lacks, the manifest last."""
import os

import boto3

from clipforge.data_pipeline.convert.cli import main
from clipforge.data_pipeline.shards import open_shards
from clipforge.data_pipeline.synthetic import make_synthetic_dataset
from tests.data_pipeline.remote_servers import s3_server


def test_convert_to_s3_publishes_the_local_layout_manifest_last(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPFORGE_STAGING", str(tmp_path / "staging"))
    captions = make_synthetic_dataset(str(tmp_path / "raw"), num_train=0, num_val=20, size=48, seed=1)
    flags = ["--image-size", "32", "--samples-per-shard", "8", "--no-progress"]
    assert main([str(captions), "--out", str(tmp_path / "local")] + flags) == 0
    local_files = sorted(n for n in os.listdir(tmp_path / "local") if not n.startswith("."))
    with s3_server(monkeypatch) as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="out")
        assert main([str(captions), "--out", "s3://out/ds"] + flags) == 0
        out = capsys.readouterr().out
        assert f"published {len(local_files)} file(s)" in out and "manifest: s3://out/ds/manifest.json" in out
        assert_manifest_last(client)

        def stored():
            listed = client.list_objects_v2(Bucket="out", Prefix="ds/").get("Contents", [])
            return sorted(o["Key"][len("ds/"):] for o in listed)

        assert stored() == local_files  # every file once, no .NAME.tmp left behind
        remote_keys = [s["key"] for s in open_shards("s3://out/ds").iter_samples()]
        assert remote_keys == [s["key"] for s in open_shards(str(tmp_path / "local")).iter_samples()]
        assert len(remote_keys) == 20
        # An upload cut short: the manifest (sent last) and a shard never arrived. The re-run resumes the
        # conversion in its staging folder (nothing to convert) and sends just those two, the manifest last.
        client.delete_objects(Bucket="out", Delete={"Objects": [{"Key": "ds/manifest.json"},
                                                               {"Key": "ds/shard-000001.tar"}]})
        assert main([str(captions), "--out", "s3://out/ds"] + flags) == 0
        assert "published 2 file(s)" in capsys.readouterr().out
        assert stored() == local_files
        assert_manifest_last(client)


def assert_manifest_last(client):
    """The manifest reached its name after every other file did. S3's LastModified has a resolution (moto's:
    1 s), so files moved within the same tick tie: none may be later than the manifest."""
    listed = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket="out", Prefix="ds/")["Contents"]}
    manifest = listed.pop("ds/manifest.json")
    assert all(when <= manifest for when in listed.values()), (manifest, listed)
