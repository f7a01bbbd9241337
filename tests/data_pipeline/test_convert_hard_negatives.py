"""`clipforge convert --neg-caption-col COL`: each image's hard-negative captions (a list cell, or the rows of one
image) become KEY.neg.txt, one per line in input order; the manifest names it apart from the caption sources; the
parquet keeps it; verify accepts it; mistakes are refused naming the flag."""
import json
import re

import pyarrow.parquet as pq
import pytest

from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline.convert.cli import main
from clipforge.data_pipeline.convert.options import ConvertError
from clipforge.data_pipeline.verify import verify

from .convert_inputs import jpeg, read_json, read_shards, write, write_csv


def negatives_jsonl(folder, lists) -> str:
    """folder/negs.jsonl: image i captioned "caption i", its hard negatives the list lists[i] (None: no cell)."""
    lines = []
    for i, negatives in enumerate(lists):
        write(folder / "images" / f"img{i}.jpg", jpeg(40, 32, seed=i))
        row = {"image": f"images/img{i}.jpg", "caption": f"caption {i}"}
        if negatives is not None:
            row["negs"] = negatives
        lines.append(json.dumps(row))
    (folder / "negs.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "negs.jsonl")


def test_a_list_column_becomes_key_neg_txt(tmp_path):
    table = negatives_jsonl(tmp_path, [["a red cat", "a cat  on\na mat"], ["one"], [], None])
    assert main([table, "--out", str(tmp_path / "out"), "--image-size", "16", "--neg-caption-col", "negs",
                 "--no-progress"]) == 0
    samples = [members for _, members in sorted(read_shards(tmp_path / "out").items())]
    assert samples[0]["neg.txt"] == b"a red cat\na cat on a mat"  # cleaned like captions: one per line
    assert samples[1]["neg.txt"] == b"one"
    assert "neg.txt" not in samples[2] and "neg.txt" not in samples[3]  # nothing to write: no member
    assert [s["txt"] for s in samples] == [f"caption {i}".encode() for i in range(4)]
    manifest = read_json(tmp_path / "out" / "manifest.json")
    assert manifest["hard_negatives"] == "neg.txt" and manifest["caption_sources"] == ["txt"]
    rows = pq.read_table(tmp_path / "out" / "shard-000000.parquet").to_pylist()
    assert [row["caption_neg"] for row in rows] == ["a red cat\na cat on a mat", "one", None, None]
    assert verify(str(tmp_path / "out"), progress=False)[2] == []


def test_rows_of_one_image_give_its_negatives_in_order(tmp_path):
    write(tmp_path / "images" / "img0.jpg", jpeg(40, 32, seed=0))
    table = write_csv(tmp_path / "t.csv", [("images/img0.jpg", "a dog", "a cat"), ("images/img0.jpg", "a puppy", "a horse")],
                      header=("image", "caption", "neg"))
    convert([table], str(tmp_path / "out"), image_size=16, progress=False, neg_caption_col="neg")
    (members,) = read_shards(tmp_path / "out").values()
    assert members["txt"] == b"a dog\na puppy" and members["neg.txt"] == b"a cat\na horse"


def test_without_the_flag_nothing_changes(tmp_path):
    table = negatives_jsonl(tmp_path, [["x"]])
    convert([table], str(tmp_path / "out"), image_size=16, progress=False)
    assert "hard_negatives" not in read_json(tmp_path / "out" / "manifest.json")
    assert {ext for members in read_shards(tmp_path / "out").values() for ext in members} == {"jpg", "txt", "json"}


@pytest.mark.parametrize("options, words", [
    ({"neg_caption_col": "nope"}, "no column 'nope' for --neg-caption-col"),
    ({"neg_caption_col": "caption", "caption_col": "caption"}, "--neg-caption-col 'caption' is also a --caption-col"),
    ({"caption_col": ["caption", "Neg"]}, "would be written as KEY.neg.txt, the hard negatives' member"),
])
def test_mistakes_are_refused_naming_the_flag(tmp_path, options, words):
    table = negatives_jsonl(tmp_path, [["x"]])
    with pytest.raises(ConvertError, match=re.escape(words)):
        convert([table], str(tmp_path / "out"), image_size=16, progress=False, **options)
