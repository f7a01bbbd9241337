"""Several caption sources per sample: `--caption-col original --caption-col synthetic` writes KEY.txt and
KEY.synthetic.txt, the manifest lists them, the parquet keeps them, and eval's reading path sees the primary."""
import re
import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline.convert.cli import main
from clipforge.data_pipeline.convert.options import ConvertError
from clipforge.data_pipeline.shards import caption_source_name, caption_sources, open_shards
from clipforge.data_pipeline.verify import verify

from .convert_inputs import jpeg, read_json, read_shards, write, write_csv

DOCS = Path(__file__).resolve().parents[2] / "docs" / "convert.md"


def recaptioned(folder, count=4) -> str:
    """folder/recaptioned.csv: image, original, synthetic (image 1 has no recaption), "Short Caption!" columns."""
    rows = []
    for i in range(count):
        write(folder / "images" / f"img{i}.jpg", jpeg(48, 40, seed=i))
        rows.append((f"images/img{i}.jpg", f"original {i}", "" if i == 1 else f"synthetic {i}", f"short {i}"))
    return write_csv(folder / "recaptioned.csv", rows, header=("image", "original", "synthetic", "Short Caption!"))


def test_further_columns_become_members_and_the_manifest_lists_them(tmp_path):
    table = recaptioned(tmp_path)
    summary = convert([table], str(tmp_path / "out"), image_size=16, progress=False,
                      caption_col=["original", "synthetic", "Short Caption!"])
    assert summary["written"] == 4
    samples = read_shards(tmp_path / "out")
    for i, (key, members) in enumerate(sorted(samples.items())):
        assert members["txt"] == f"original {i}".encode() and members["short_caption.txt"] == f"short {i}".encode()
        # an empty recaption cell: no member (the loader falls back to KEY.txt and counts it)
        assert members.get("synthetic.txt") == (None if i == 1 else f"synthetic {i}".encode())
        assert read_json(tmp_path / "out" / "manifest.json")["caption_sources"] == \
            ["txt", "synthetic.txt", "short_caption.txt"]
    rows = pq.read_table(tmp_path / "out" / "shard-000000.parquet").to_pylist()
    assert [row["caption_synthetic"] for row in rows] == ["synthetic 0", None, "synthetic 2", "synthetic 3"]
    assert [row["caption"] for row in rows] == [f"original {i}" for i in range(4)]
    # eval and every reader without caption weights read the primary source, as before
    dataset = open_shards(str(tmp_path / "out"))
    assert [s["captions"] for s in dataset.iter_samples()] == [[f"original {i}"] for i in range(4)]
    assert caption_sources(dataset.manifest) == ["txt", "synthetic.txt", "short_caption.txt"]
    assert verify(str(tmp_path / "out"), progress=False)[2] == []


def test_one_source_keeps_the_old_layout(tmp_path):
    table = recaptioned(tmp_path, count=2)
    convert([table], str(tmp_path / "out"), image_size=16, progress=False, caption_col="original")
    assert {ext for members in read_shards(tmp_path / "out").values() for ext in members} == {"jpg", "txt", "json"}
    assert read_json(tmp_path / "out" / "manifest.json")["caption_sources"] == ["txt"]
    assert "caption_synthetic" not in pq.read_table(tmp_path / "out" / "shard-000000.parquet").column_names


def test_a_recaption_that_is_not_utf8_rejects_the_item_with_its_source_named(tmp_path):
    table = recaptioned(tmp_path, count=2)
    text = Path(table).read_bytes().replace(b"synthetic 0", b"synth\xe9tic 0")
    Path(table).write_bytes(text)
    summary = convert([table], str(tmp_path / "out"), image_size=16, progress=False,
                      caption_col=["original", "synthetic"])
    assert summary["written"] == 1 and summary["rejected"] == {"invalid_caption": 1}
    row = pq.read_table(tmp_path / "out" / "shard-000000.parquet").to_pylist()[0]
    assert "synthetic.txt source" in row["error_message"] and row["caption_synthetic"] == "synth\\udce9tic 0"


@pytest.mark.parametrize("columns, words", [
    (["original", "nope"], "no column 'nope' for --caption-col"),
    (["original", "Synthetic", "synthetic"], "would both be written as KEY.synthetic.txt"),
    (["original", "!!!"], "no letter or digit"),
])
def test_bad_caption_columns_are_refused_naming_them(tmp_path, columns, words):
    table = recaptioned(tmp_path, count=1)
    Path(table).write_text(Path(table).read_text().replace("Short Caption!", "Synthetic"))
    with pytest.raises(ConvertError, match=re.escape(words)):
        convert([table], str(tmp_path / "out"), image_size=16, progress=False, caption_col=columns)


def test_inputs_without_caption_columns_refuse_further_ones(tmp_path):
    write(tmp_path / "photos" / "a.jpg", jpeg(40, 30, seed=1))
    write(tmp_path / "photos" / "a.txt", b"a photo")
    with pytest.raises(ConvertError, match="a folder input has no caption columns for the further --caption-col syn"):
        convert([str(tmp_path / "photos")], str(tmp_path / "out"), caption_col=["caption", "syn"], progress=False)


def test_sanitised_names():
    assert caption_source_name("Synthetic Caption (v2)") == "synthetic_caption_v2.txt"
    assert caption_source_name("syn.txt") == "syn_txt.txt" and caption_source_name("--") == ""


def test_the_docs_example_runs(tmp_path, monkeypatch):
    """docs/convert.md's --caption-col example, as printed, on a stand-in recaptioned.csv."""
    line = re.search(r"^clipforge convert recaptioned\.csv .*$", DOCS.read_text(), re.M).group(0)
    recaptioned(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(line)[2:] + ["--no-progress"]) == 0
    assert read_json(tmp_path / "shards" / "manifest.json")["caption_sources"] == ["txt", "synthetic.txt"]
    # the peers' spelling repeats too
    assert main(["recaptioned.csv", "--out", "peer", "--caption_col", "original", "--caption_col", "synthetic",
                 "--no-progress"]) == 0
    assert read_json(tmp_path / "peer" / "manifest.json")["caption_sources"] == ["txt", "synthetic.txt"]
