"""CSV tables: rows sharing an image become one sample with all captions; --include-list; output layout."""
import json
import os

import pyarrow.parquet as pq
import pytest

from clipforge.data_pipeline.convert import ConvertError, convert
from clipforge.data_pipeline.convert.cli import main

from .convert_inputs import caption_table, read_json, read_shards, write, write_csv


def test_rows_sharing_an_image_become_one_sample_with_all_captions(tmp_path):
    table = caption_table(tmp_path / "raw", count=5, captions_per_image=3)
    summary = convert([table], str(tmp_path / "out"), samples_per_shard=2, image_size=32, progress=False)
    assert (summary["input_items"], summary["written"], summary["shards"]) == (5, 5, 3)
    samples = read_shards(tmp_path / "out")
    assert len(samples) == 5
    first = samples[sorted(samples)[0]]
    assert set(first) == {"jpg", "txt", "json"}
    assert first["txt"].decode().split("\n") == [f"caption {j} of image 0" for j in range(3)]
    meta = json.loads(first["json"])
    assert (meta["original_width"], meta["original_height"], meta["width"], meta["height"]) == (64, 48, 43, 32)
    assert meta["source"].endswith(os.path.join("raw", "images", "img0.jpg"))


def test_output_files_follow_the_design(tmp_path):
    table = caption_table(tmp_path / "raw", count=5)
    out = tmp_path / "out"
    convert([table], str(out), samples_per_shard=2, image_size=32, progress=False)
    names = sorted(os.listdir(out))
    for index in range(3):
        for suffix in (".tar", ".parquet", "_stats.json"):
            assert f"shard-{index:06d}{suffix}" in names
    assert not [name for name in names if name.startswith(".")], "temporary files left behind"
    manifest = read_json(out / "manifest.json")
    assert manifest["format"] == "clipforge-shards" and manifest["version"] == 1
    assert manifest["num_samples"] == 5 and sum(manifest["counts"].values()) == 5
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 1]
    assert read_json(out / "sizes.json") == {"shard-000000.tar": 2, "shard-000001.tar": 2, "shard-000002.tar": 1}
    assert manifest["image"] == {"size": 32, "resize_mode": "keep_ratio", "encode_format": "jpg", "quality": 95}
    table = pq.read_table(out / "shard-000000.parquet").to_pydict()
    for column in ("key", "source", "caption", "status", "error_message", "width", "height",
                   "original_width", "original_height", "sha256"):
        assert column in table
    assert table["status"] == ["success", "success"]


def test_include_list_selects_rows_by_file_name(tmp_path):
    table = caption_table(tmp_path / "raw", count=6, captions_per_image=2)
    write(tmp_path / "split.txt", b"img1.jpg\nimg4.jpg\n")
    summary = convert([table], str(tmp_path / "out"), include_list=str(tmp_path / "split.txt"), progress=False)
    assert summary["input_items"] == summary["written"] == 2
    sources = sorted(json.loads(s["json"])["source"] for s in read_shards(tmp_path / "out").values())
    assert [os.path.basename(s) for s in sources] == ["img1.jpg", "img4.jpg"]


def test_missing_column_is_refused_before_any_work(tmp_path):
    table = write_csv(tmp_path / "t.csv", [("a.jpg", "a cat")], header=("picture", "text"))
    with pytest.raises(ConvertError, match=r"t\.csv: cannot tell which column .*--image-col.*columns: picture, text"):
        convert([table], str(tmp_path / "out"), progress=False)
    with pytest.raises(ConvertError, match=r"no column 'img' for --image-col"):
        convert([table], str(tmp_path / "out"), image_col="img", progress=False)
    with pytest.raises(ConvertError, match=r"no column 'license' for --keep-cols"):
        convert([table], str(tmp_path / "out"), image_col="picture", caption_col="text", keep_cols=["license"],
                progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_converts_and_reports_errors_in_one_line(tmp_path, capsys):
    table = caption_table(tmp_path / "raw", count=3)
    assert main([table, "--out", str(tmp_path / "out"), "--image-size", "16", "--no-progress"]) == 0
    assert "3 input items -> 3 written, 0 rejected" in capsys.readouterr().out
    assert main([str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o2")]) == 2
    assert "nope.csv: no such file" in capsys.readouterr().err


@pytest.mark.flickr8k
def test_flickr8k_split_converts_with_five_captions(flickr8k_dir, tmp_path):
    summary = convert([str(flickr8k_dir / "captions.csv")], str(tmp_path / "out"), image_size=64,
                      include_list=str(flickr8k_dir / "splits" / "test.txt"), samples_per_shard=500,
                      progress=False)
    assert summary["input_items"] == summary["written"] == 1000
    samples = read_shards(tmp_path / "out")
    assert len(samples) == 1000
    assert all(len(s["txt"].decode().split("\n")) == 5 for s in samples.values())
