"""clipforge verify: a clean conversion passes; every kind of damage is found and named (shard and key)."""
import io
import json
import tarfile

import pytest

from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline.verify import main

from .convert_inputs import caption_table, jpeg, write, write_csv


@pytest.fixture()
def dataset(tmp_path):
    table = caption_table(tmp_path / "raw", count=6, captions_per_image=2)
    convert([table], str(tmp_path / "out"), image_size=24, samples_per_shard=3, progress=False)
    return tmp_path / "out"


def _rewrite_member(path, name, data: bytes):
    """Rewrite a shard tar with one member's content replaced (a realistic corruption, sizes change)."""
    members = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            members.append((member, data if member.name == name else tar.extractfile(member).read()))
    with tarfile.open(path, "w") as tar:
        for member, content in members:
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))


def test_clean_dataset_passes(dataset, capsys):
    assert main([str(dataset), "--no-progress"]) == 0
    assert "2 shards, 6 samples, 0 problem(s): OK" in capsys.readouterr().out


def test_flipped_byte_is_named_by_shard(dataset, capsys):
    path = dataset / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main([str(dataset), "--no-progress"]) == 1
    assert "PROBLEM shard-000001.tar:" in capsys.readouterr().out


def test_undecodable_image_and_empty_caption_are_named_by_key(dataset, capsys):
    _rewrite_member(dataset / "shard-000000.tar", "000000001.jpg", b"\xff\xd8 not a jpeg")
    _rewrite_member(dataset / "shard-000000.tar", "000000002.txt", b"a caption\n\n")
    assert main([str(dataset), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "shard-000000.tar: key 000000001: image does not decode" in out
    assert "shard-000000.tar: key 000000002: empty caption line" in out
    assert "sha256 differ from the manifest" in out


def test_duplicate_keys_and_count_mismatch(dataset, capsys):
    manifest = json.loads((dataset / "manifest.json").read_text())
    (dataset / "shard-000001.tar").write_bytes((dataset / "shard-000000.tar").read_bytes())
    manifest["shards"][1].update(bytes=manifest["shards"][0]["bytes"], sha256=manifest["shards"][0]["sha256"])
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(dataset), "--no-progress"]) == 1
    assert "shard-000001.tar: key 000000000: duplicate key (also in shard-000000.tar)" in capsys.readouterr().out


def test_missing_shard_and_not_a_dataset(dataset, tmp_path, capsys):
    (dataset / "shard-000001.tar").unlink()
    assert main([str(dataset), "--no-progress"]) == 1
    assert "shard-000001.tar: missing" in capsys.readouterr().out
    assert main([str(tmp_path / "raw"), "--no-progress"]) == 2
    assert "is not a readable shard dataset" in capsys.readouterr().err


def test_a_further_caption_source_is_checked_too(tmp_path, capsys):
    for i in range(2):
        write(tmp_path / "raw" / f"img{i}.jpg", jpeg(40, 30, seed=i))
    rows = [(f"img{i}.jpg", f"caption {i}", f"recaption {i}") for i in range(2)]
    table = write_csv(tmp_path / "raw" / "table.csv", rows, header=("image", "caption", "synthetic"))
    convert([table], str(tmp_path / "out"), image_size=24, caption_col=["caption", "synthetic"], progress=False)
    assert main([str(tmp_path / "out"), "--no-progress"]) == 0
    _rewrite_member(tmp_path / "out" / "shard-000000.tar", "000000001.synthetic.txt", b"re\xe9caption")
    assert main([str(tmp_path / "out"), "--no-progress"]) == 1
    assert "key 000000001: caption in 000000001.synthetic.txt is not UTF-8" in capsys.readouterr().out
