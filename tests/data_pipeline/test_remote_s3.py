"""The train loader on shards in S3 (moto's S3 API, in server mode on 127.0.0.1, started by the test):
the same batches as from the local copy, every sample once per epoch over ranks and workers, exact resume
on another world size; the dataset named by its folder, its manifest or a brace pattern."""
import json
import os
import subprocess
import sys

import pytest
import torch

from clipforge.data_pipeline.config import DataConfig, SourceConfig
from clipforge.data_pipeline.shards import ShardError, open_shards
from clipforge.data_pipeline.stream import build_train_loader
from clipforge.errors import UserError
from tests.data_pipeline.conftest import write_dataset
from tests.data_pipeline.remote_servers import s3_server, upload_dir
from tests.data_pipeline.test_stream_loader import make_loader, take_global


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("CLIPFORGE_READ_BACKOFF_S", "0.01")
    with s3_server(monkeypatch) as endpoint:
        yield endpoint


def batches(loaders, steps):
    """Per step, the ranks' (keys, images, tokens) joined in rank order (= the global batch)."""
    out = [[] for _ in loaders]
    for rank, loader in enumerate(loaders):
        while len(out[rank]) < steps:
            for batch in loader:
                out[rank].append((batch["keys"], batch["images"], batch["tokens"]))
                if len(out[rank]) == steps:
                    break
    return [(sum((out[r][s][0] for r in range(len(loaders))), []),
             torch.cat([out[r][s][1] for r in range(len(loaders))]),
             torch.cat([out[r][s][2] for r in range(len(loaders))])) for s in range(steps)]


def test_s3_shards_give_the_local_batches_once_per_epoch_over_ranks_and_workers(s3, tmp_path):
    keys = write_dataset(tmp_path / "ds", num_shards=4, per_shard=10)
    url = upload_dir(s3, tmp_path / "ds", "bucket", "ds")
    reference = batches([make_loader([(tmp_path / "ds", 1)])], 10)  # local, one rank, no workers: 2 epochs
    remote = batches([make_loader([(url, 1)], rank=r, world=2, workers=2) for r in range(2)], 10)
    for (ref_keys, ref_images, ref_tokens), (keys_, images, tokens) in zip(reference, remote):
        assert keys_ == ref_keys
        assert torch.equal(images, ref_images) and torch.equal(tokens, ref_tokens)
    for epoch in range(2):
        seen = [k for step in remote[epoch * 5:(epoch + 1) * 5] for k in step[0]]
        assert len(seen) == 40 and sorted(seen) == keys


def test_s3_resume_on_another_world_size_equals_the_uninterrupted_run(s3, tmp_path):
    write_dataset(tmp_path / "a", num_shards=3, per_shard=[9, 7, 8], prefix="a")
    write_dataset(tmp_path / "b", num_shards=2, per_shard=6, prefix="b")
    sources = [(upload_dir(s3, tmp_path / "a", "bucket", "a"), 3.0), (upload_dir(s3, tmp_path / "b", "bucket", "b"), 1.0)]
    reference = take_global([make_loader([(tmp_path / "a", 3.0), (tmp_path / "b", 1.0)], batch=6)], 12)
    first = [make_loader(sources, rank=r, world=2, workers=1, batch=6) for r in range(2)]
    head = take_global(first, 5)
    saved = json.loads(json.dumps(first[0].state_dict()))
    assert "failed_reads" not in saved and saved["position"] == 30
    resumed = [make_loader(sources, rank=r, world=3, workers=1, batch=6, state=saved) for r in range(3)]
    assert head + take_global(resumed, 7) == reference


def test_s3_dataset_by_folder_manifest_or_brace_pattern(s3, tmp_path):
    write_dataset(tmp_path / "ds", num_shards=3, per_shard=[4, 5, 6])
    url = upload_dir(s3, tmp_path / "ds", "bucket", "ds")
    by_folder, by_manifest = open_shards(url), open_shards(f"{url}/manifest.json")
    by_pattern = open_shards(f"{url}/shard-{{000000..000002}}.tar")
    expected = [(f"{url}/shard-00000{i}.tar", n) for i, n in enumerate([4, 5, 6])]
    for ds in (by_folder, by_manifest, by_pattern):
        assert [(s.path, s.samples) for s in ds.shards] == expected
    local = [s["key"] for s in open_shards(str(tmp_path / "ds")).iter_samples()]
    assert [s["key"] for s in by_pattern.iter_samples()] == local
    with pytest.raises(ShardError, match=r"1 of 4 shards not found: s3://bucket/ds/shard-000003.tar"):
        open_shards(f"{url}/shard-{{000000..000003}}.tar")


def test_endpoint_and_credentials_come_from_the_fsspec_and_aws_environment(s3, tmp_path):
    """A fresh process sees the S3 endpoint through FSSPEC_S3_ENDPOINT_URL and the keys through AWS_*, as a
    user's shell would give them (s3_server set both): clipforge's configs name neither."""
    write_dataset(tmp_path / "ds", num_shards=2, per_shard=3)
    url = upload_dir(s3, tmp_path / "ds", "bucket", "ds")
    code = "import sys; from clipforge.data_pipeline.shards import open_shards; print(open_shards(sys.argv[1]).num_samples)"
    done = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "6"


def test_stored_embeddings_beside_a_remote_dataset_are_refused_in_one_line(s3, tmp_path):
    write_dataset(tmp_path / "ds", num_shards=1, per_shard=4)
    url = upload_dir(s3, tmp_path / "ds", "bucket", "ds")
    cfg = DataConfig(sources=[SourceConfig(url)], shuffle_window=4)
    with pytest.raises(UserError, match=r"s3://bucket/ds: stored embeddings .* copy the dataset to a local folder, "
                                        r"or turn the cache off \(model.text_cache=false\)"):
        build_train_loader(cfg, seed=0, global_batch_size=2, rank=0, world_size=1, image_size=16,
                           tokenizer=lambda captions: torch.zeros(len(captions), 4, dtype=torch.long),
                           text_store=("text-0123", {"sha256": "0"}))
    assert not os.path.exists("s3:")  # no local folder was made of the URL
