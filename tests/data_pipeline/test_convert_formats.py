"""Every local input format gives the same samples: folder (sidecars, captions table), tsv, parquet, jsonl, COCO,
Karpathy json; auto-detection says what it picked."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipforge.data_pipeline.convert import ConvertError, convert

from .convert_inputs import jpeg, read_shards, write, write_csv


@pytest.fixture()
def images(tmp_path):
    for i in range(3):
        write(tmp_path / "imgs" / f"p{i}.jpg", jpeg(40, 30, seed=i))
    return tmp_path


def captions_by_file(out_dir) -> dict:
    result = {}
    for sample in read_shards(out_dir).values():
        meta = json.loads(sample["json"])
        result[meta["source"].rsplit("/", 1)[-1]] = sample["txt"].decode().split("\n")
    return result


EXPECTED = {"p0.jpg": ["a red kite", "a kite"], "p1.jpg": ["two dogs"], "p2.jpg": ["a boat at dawn"]}


def _run(inputs, out, **options):
    options.setdefault("progress", False)
    summary = convert([str(i) for i in inputs], str(out), image_size=16, **options)
    assert summary["written"] == summary["input_items"] == 3
    return captions_by_file(out)


def test_folder_with_txt_and_json_sidecars(images, capsys):
    write(images / "imgs" / "p0.txt", b"a red kite\na kite\n")
    write(images / "imgs" / "p1.json", json.dumps({"caption": "two dogs"}).encode())
    write(images / "imgs" / "p2.json", json.dumps({"captions": ["a boat at dawn"]}).encode())
    assert _run([images / "imgs"], images / "out", progress=True) == EXPECTED
    assert "format folder (a directory)" in capsys.readouterr().err


def test_folder_with_a_captions_table(images):
    write_csv(images / "imgs" / "captions.csv",
              [("p0.jpg", "a red kite"), ("p1.jpg", "two dogs"), ("p0.jpg", "a kite"), ("p2.jpg", "a boat at dawn")])
    assert _run([images / "imgs"], images / "out") == EXPECTED


def test_tsv_with_named_columns(images):
    rows = [("imgs/p0.jpg", "a red kite"), ("imgs/p0.jpg", "a kite"), ("imgs/p1.jpg", "two dogs"),
            ("imgs/p2.jpg", "a boat at dawn")]
    table = write_csv(images / "t.tsv", rows, header=("file", "alt"), delimiter="\t")
    assert _run([table], images / "out", image_col="file", caption_col="alt") == EXPECTED


def test_parquet_with_kept_columns_and_caption_lists(images):
    table = pa.table({"path": ["imgs/p0.jpg", "imgs/p1.jpg", "imgs/p2.jpg"],
                      "caption": [["a red kite", "a kite"], ["two dogs"], ["a boat at dawn"]],
                      "license": ["cc-by", "cc0", "cc-by-sa"]})
    pq.write_table(table, images / "t.parquet")
    out = images / "out"
    assert _run([images / "t.parquet"], out, keep_cols=["license"]) == EXPECTED
    metas = sorted(json.loads(s["json"])["license"] for s in read_shards(out).values())
    assert metas == ["cc-by", "cc-by-sa", "cc0"]
    assert pq.read_table(out / "shard-000000.parquet").column("license").to_pylist() == ["cc-by", "cc0", "cc-by-sa"]


def test_jsonl(images):
    lines = [{"image": "imgs/p0.jpg", "text": "a red kite"}, {"image": "imgs/p0.jpg", "text": "a kite"},
             {"image": "imgs/p1.jpg", "text": "two dogs"}, {"image": "imgs/p2.jpg", "text": "a boat at dawn"}]
    write(images / "t.jsonl", "\n".join(json.dumps(line) for line in lines).encode())
    assert _run([images / "t.jsonl"], images / "out") == EXPECTED


def test_coco_captions_keep_all_captions(images, capsys):
    coco = {"images": [{"id": 7 + i, "file_name": f"p{i}.jpg"} for i in range(3)],
            "annotations": [{"image_id": 7, "caption": "a red kite"}, {"image_id": 8, "caption": "two dogs"},
                            {"image_id": 7, "caption": "a kite"}, {"image_id": 9, "caption": "a boat at dawn"}]}
    write(images / "ann.json", json.dumps(coco).encode())
    assert _run([images / "ann.json"], images / "out", image_root=str(images / "imgs"), progress=True) == EXPECTED
    assert "format coco" in capsys.readouterr().err


def test_karpathy_flickr_json_with_split(images):
    sentences = {0: ["a red kite", "a kite"], 1: ["two dogs"], 2: ["a boat at dawn"], 3: ["held out"]}
    write(images / "imgs" / "p3.jpg", jpeg(40, 30, seed=3))
    data = {"dataset": "flickr8k", "images": [
        {"filename": f"p{i}.jpg", "split": "test" if i == 3 else ("restval" if i == 2 else "train"),
         "sentences": [{"raw": s, "tokens": s.split()} for s in sentences[i]]} for i in range(4)]}
    write(images / "dataset_flickr8k.json", json.dumps(data).encode())
    assert _run([images / "dataset_flickr8k.json"], images / "out", split="train",
                image_root=str(images / "imgs")) == EXPECTED


def test_several_inputs_concatenate_in_order_with_unique_keys(images):
    write_csv(images / "a.csv", [("imgs/p0.jpg", "a red kite"), ("imgs/p0.jpg", "a kite")])
    write_csv(images / "b.csv", [("imgs/p1.jpg", "two dogs"), ("imgs/p2.jpg", "a boat at dawn")])
    assert _run([images / "a.csv", images / "b.csv"], images / "out") == EXPECTED
    assert sorted(read_shards(images / "out")) == ["000000000", "000000001", "000000002"]


def test_unknown_shapes_are_refused_with_the_fix(images):
    write(images / "x.json", b'{"foo": 1}')
    with pytest.raises(ConvertError, match=r"x\.json: json is neither COCO .* pass --format"):
        convert([str(images / "x.json")], str(images / "out"), progress=False)
    write(images / "x.dat", b"")
    with pytest.raises(ConvertError, match=r"x\.dat: cannot tell the format .*pass --format"):
        convert([str(images / "x.dat")], str(images / "out"), progress=False)
    write(images / "bad.jsonl", b'{"image": "a.jpg"}\nnot json\n')
    with pytest.raises(ConvertError, match=r"bad\.jsonl:2: not a JSON object"):
        convert([str(images / "bad.jsonl")], str(images / "out"), progress=False)
