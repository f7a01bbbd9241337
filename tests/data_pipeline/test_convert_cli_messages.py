"""convert's exit codes and summary (issue 14): a file as --out, all/most items rejected, grouping and guessed
columns named, defaults in --help, img2dataset's spellings and `url` column, --one-caption-per-txt."""
import json

import pyarrow.parquet as pq
import pytest

from clipforge.data_pipeline.convert.cli import main, parser
from clipforge.data_pipeline.shards import open_shards, txt_holds_first_caption

from .convert_inputs import caption_table, read_json, read_shards, write, write_csv


def test_an_existing_file_as_out_is_one_line_and_exit_2(tmp_path, capsys):
    table = caption_table(tmp_path / "raw", count=2)
    target = write(tmp_path / "taken.txt", b"not a folder")
    assert main([table, "--out", target, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"clipforge convert: error: --out {target}: is an existing file, not a folder; "
                   "give a new or empty folder"]


def _broken_table(tmp_path, good: int, bad: int) -> str:
    table = caption_table(tmp_path / "raw", count=max(good, 1))
    rows = [(f"images/img{i}.jpg", f"caption 0 of image {i}") for i in range(good)]
    rows += [(f"images/missing{i}.jpg", f"caption of missing {i}") for i in range(bad)]
    write(tmp_path / "raw" / "images" / "junk0.jpg", b"not a jpeg at all")
    return write_csv(table, rows + ([("images/junk0.jpg", "junk")] if bad else []))


def test_everything_rejected_fails_and_names_examples_and_the_parquet(tmp_path, capsys):
    table = _broken_table(tmp_path, good=0, bad=4)
    out = tmp_path / "out"
    assert main([table, "--out", str(out), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "every one of the 5 input items was rejected" in captured.err
    examples = [line for line in captured.out.splitlines() if line.startswith("  e.g. ")]
    assert len(examples) == 3 and "failed_to_read:" in examples[0] and "missing0.jpg" in examples[0]
    assert f"{out}/shard-*.parquet" in captured.out


def test_max_reject_fraction_sets_the_bar(tmp_path, capsys):
    table = _broken_table(tmp_path, good=6, bad=1)  # 2 of 8 rejected: 25%
    assert main([table, "--out", str(tmp_path / "a"), "--no-progress"]) == 0  # default 1.0: only all-rejected fails
    assert main([table, "--out", str(tmp_path / "b"), "--no-progress", "--max-reject-fraction", "0.3"]) == 0
    assert main([table, "--out", str(tmp_path / "c"), "--no-progress", "--max-reject-fraction", "0.2"]) == 1
    assert "2 of 8 input items (25.0%) were rejected, more than --max-reject-fraction 0.2" in capsys.readouterr().err
    assert main([table, "--out", str(tmp_path / "d"), "--max-reject-fraction", "1.5"]) == 2


def test_summary_says_how_rows_were_grouped_and_which_columns_were_guessed(tmp_path, capsys):
    table = caption_table(tmp_path / "raw", count=4, captions_per_image=5)
    assert main([table, "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "20 rows -> 4 images, 5 captions each; guessed columns --image-col 'image', --caption-col 'caption'" in out
    assert main([table, "--out", str(tmp_path / "o2"), "--no-progress", "--image-col", "image",
                 "--caption-col", "caption"]) == 0
    out = capsys.readouterr().out
    assert "20 rows -> 4 images, 5 captions each" in out and "guessed" not in out


def test_every_option_with_a_value_shows_its_default_in_help():
    text = " ".join(parser().format_help().split())
    for shown in ("input format (default: auto)", "(default: 256)", "(default: keep_ratio)", "(default: 95)",
                  "is smaller (default: 0)", "(default: 1000)", "(default: 1.0)", "(default: 10.0)"):
        assert shown in text, shown


def test_img2dataset_spellings_border_resize_and_url_column(tmp_path):
    caption_table(tmp_path / "raw", count=1, size=(80, 40))  # writes images/img0.jpg (80x40)
    table = write_csv(tmp_path / "raw" / "t.csv", [("images/img0.jpg", "a wide photo")], header=("URL", "TEXT"))
    out = tmp_path / "out"
    assert main([table, "--output_folder", str(out), "--input_format", "csv", "--url_col", "URL",
                 "--caption_col", "TEXT", "--resize_mode", "border", "--image_size", "32", "--no-progress"]) == 0
    sample = next(iter(read_shards(out).values()))
    meta = json.loads(sample["json"])
    assert (meta["width"], meta["height"]) == (32, 32)
    row = pq.read_table(out / "shard-000000.parquet").to_pylist()[0]
    assert row["url"] == row["source"] and row["source"].endswith("img0.jpg")
    assert read_json(out / "manifest.json")["image"]["resize_mode"] == "border"


def test_img2dataset_value_names_txt_and_no(tmp_path):
    caption_table(tmp_path / "raw", count=2, size=(40, 30))
    urls = write(tmp_path / "raw" / "list.lst", b"images/img0.jpg\tfirst\nimages/img1.jpg\tsecond\n")
    out = tmp_path / "out"
    assert main([urls, "--out", str(out), "--input_format", "txt", "--resize_mode", "no", "--no-progress"]) == 0
    manifest = read_json(out / "manifest.json")
    assert manifest["created_by"]["config"]["fmt"] == "urls" and manifest["image"]["resize_mode"] == "none"
    assert manifest["num_samples"] == 2


def test_one_caption_per_txt_keeps_every_caption_in_the_json_and_the_readers(tmp_path):
    table = caption_table(tmp_path / "raw", count=3, captions_per_image=4)
    out = tmp_path / "out"
    assert main([table, "--out", str(out), "--one-caption-per-txt", "--no-progress"]) == 0
    for sample in read_shards(out).values():
        captions = json.loads(sample["json"])["captions"]
        assert len(captions) == 4 and sample["txt"].decode() == captions[0]
    shards = open_shards(str(out))
    assert txt_holds_first_caption(shards)
    assert [len(s["captions"]) for s in shards.iter_samples()] == [4, 4, 4]  # eval sees every caption


@pytest.mark.parametrize("flag", ["--one-caption-per-txt", "--open-clip-captions"])
def test_both_spellings_of_the_open_clip_caption_option(flag):
    assert parser().parse_args(["x", "--out", "y", flag]).one_caption_per_txt
