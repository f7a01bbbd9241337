"""data_pipeline.shards: opening datasets (dir, tar, brace pattern), counts, reading samples, errors."""
import json
import os

import pytest

from clipforge.data_pipeline.shards import ShardError, index_tar, iter_samples, open_shards
from tests.data_pipeline.conftest import jpeg_bytes, write_dataset


def test_open_dir_with_manifest(small_dataset):
    out, keys = small_dataset
    ds = open_shards(str(out))
    assert [s.name for s in ds.shards] == [f"shard-{i:06d}.tar" for i in range(4)]
    assert [s.samples for s in ds.shards] == [10] * 4
    assert ds.num_samples == 40 and ds.manifest["num_samples"] == 40


def test_open_dir_with_sizes_only(tmp_path):
    write_dataset(tmp_path, num_shards=2, per_shard=[3, 5], manifest=False)
    ds = open_shards(str(tmp_path))
    assert [s.samples for s in ds.shards] == [3, 5] and ds.manifest is None


def test_brace_pattern_and_single_tar(small_dataset):
    out, keys = small_dataset
    ds = open_shards(f"{out}/shard-{{000001..000002}}.tar")
    assert [s.name for s in ds.shards] == ["shard-000001.tar", "shard-000002.tar"]
    assert [s["key"] for s in ds.iter_samples()] == keys[10:30]
    one = open_shards(str(out / "shard-000003.tar"))
    assert one.num_samples == 10


def test_counts_by_scanning_when_no_sizes_file(small_dataset):
    out, keys = small_dataset
    os.remove(out / "manifest.json")
    os.remove(out / "sizes.json")
    assert open_shards(str(out / "shard-000000.tar")).shards[0].samples == 10


def test_iter_samples_content_and_subset(small_dataset):
    out, keys = small_dataset
    samples = list(iter_samples(str(out), shards=[2]))
    assert [s["key"] for s in samples] == keys[20:30]
    first = samples[0]
    assert first["image_ext"] == "jpg" and first["image_bytes"] == jpeg_bytes(20)
    assert first["captions"] == ["caption 0 of s000020", "caption 1 of s000020"]
    assert first["meta"] == {"index": 20} and first["shard"] == "shard-000002.tar"
    assert [s["key"] for s in iter_samples(str(out))] == keys


def test_missing_shard_named_before_any_work(small_dataset):
    out, _ = small_dataset
    os.remove(out / "shard-000002.tar")
    with pytest.raises(ShardError, match="shard-000002.tar"):
        open_shards(str(out))
    with pytest.raises(ShardError, match="7 of 10 shards not found: .*shard-000004.tar.*and 2 more"):
        open_shards(f"{out}/shard-{{000000..000009}}.tar")


def test_missing_dataset_and_bad_manifest(tmp_path):
    with pytest.raises(ShardError, match="no manifest.json or sizes.json"):
        open_shards(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="manifest.json: not valid JSON"):
        open_shards(str(tmp_path))
    with pytest.raises(ShardError, match="dataset not found: .*nowhere"):
        open_shards(str(tmp_path / "nowhere"))
    os.remove(tmp_path / "manifest.json")
    with pytest.raises(ShardError, match="1 of 1 shards not found: .*nowhere.tar"):
        open_shards(str(tmp_path / "nowhere.tar"))


def test_not_a_tar_is_a_clear_error(tmp_path):
    bad = tmp_path / "shard-000000.tar"
    bad.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(ShardError, match="not a readable tar"):
        open_shards(str(bad))


def test_truncated_tar_keeps_complete_samples(small_dataset):
    out, keys = small_dataset
    path = out / "shard-000001.tar"
    full = index_tar(str(path))
    assert not full.truncated and len(full.samples) == 10
    # Cut inside the 8th sample's image: samples 0..6 survive intact.
    cut = full.samples[7].members["jpg"][0] + 10
    with open(path, "r+b") as f:
        f.truncate(cut)
    index = index_tar(str(path))
    assert index.truncated
    assert [e.key for e in index.samples] == keys[10:17]
    # The manifest still says 10: the loader counts the missing ones; eval reads what is there.
    assert open_shards(str(out)).shards[1].samples == 10
    assert [s["key"] for s in iter_samples(str(out), shards=[1])] == keys[10:17]
    # Cut exactly at a member boundary (no end-of-archive blocks): the last group may be partial, dropped.
    with open(path, "r+b") as f:
        f.truncate(full.samples[5].members["json"][0] - 512)
    assert index_tar(str(path)).truncated
    assert [e.key for e in index_tar(str(path)).samples] == keys[10:15]  # s000015 had only its .jpg


def test_missing_caption_and_meta_come_back_empty(tmp_path):
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "shard-000000.tar")) as sink:
        sink.write({"__key__": "a", "jpg": jpeg_bytes(0)})
        sink.write({"__key__": "b", "txt": "only text", "json": b"[1, 2]"})
    (tmp_path / "sizes.json").write_text(json.dumps({"shard-000000.tar": 2}))
    a, b = list(iter_samples(str(tmp_path)))
    assert a["captions"] == [] and a["meta"] == {} and a["image_ext"] == "jpg"
    assert b["image_bytes"] is None and b["captions"] == ["only text"] and b["meta"] == {}
