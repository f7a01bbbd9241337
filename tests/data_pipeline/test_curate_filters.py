"""clipforge curate's per-sample filters on a converted dataset with known answers (tests/data_pipeline/
curate_inputs.py): every input sample gets exactly one fate, the counts add up, the output verifies."""
import hashlib
import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline.curate import curate
from clipforge.data_pipeline.verify import verify

from .conftest import write_dataset
from .convert_inputs import jpeg, read_shards, write, write_csv
from .curate_inputs import KEYS, converted, fates, input_rows, reasons

KEPT = ("success", None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return converted(tmp_path_factory.mktemp("curate"))


def test_datacomp_basic_filters(shards, tmp_path):
    out = str(tmp_path / "out")
    manifest = curate(shards, out, min_words=3, min_image_size=32, max_aspect_ratio=3, samples_per_shard=3,
                      progress=False)
    assert list(fates(out).values()) == [KEPT, ("filtered", "min_words"), ("filtered", "min_image_size"),
                                         ("filtered", "max_aspect_ratio"), KEPT, KEPT, KEPT, ("filtered", "min_words")]
    assert list(fates(out)) == KEYS  # every input sample, in input order
    assert manifest["counts"] == {"success": 4, "filtered": 4} and manifest["input_items"] == 8
    assert manifest["removed_by"] == {"max_aspect_ratio": 1, "min_image_size": 1, "min_words": 2}
    assert [(s["name"], s["samples"]) for s in manifest["shards"]] == [("shard-000000.tar", 3), ("shard-000001.tar", 1)]
    why = reasons(out)
    # the ORIGINAL 20x20 is measured, not the stored 32x32
    assert why[KEYS[2]] == "20x20: shorter side 20 < --min-image-size 32"
    assert why[KEYS[1]] == "longest caption has 1 words < --min-words 3"
    assert why[KEYS[3]] == "200x40: aspect ratio 5 > --max-aspect-ratio 3"
    _, total, problems = verify(out, progress=False)
    assert problems == [] and total == 4


def test_kept_samples_are_copied_byte_for_byte(shards, tmp_path):
    out = str(tmp_path / "out")
    curate(shards, out, min_words=3, progress=False)
    before, after = read_shards(shards), read_shards(out)
    assert list(after) == [KEYS[i] for i in (0, 2, 3, 4, 5, 6)]
    assert all(after[key] == before[key] for key in after)
    shard_rows = pq.read_table(os.path.join(out, "shard-000000.parquet")).to_pylist()
    assert [row["key"] for row in shard_rows] == list(after)
    assert {row["status"] for row in shard_rows} == {"success"}
    assert shard_rows[1]["original_width"] == 20 and shard_rows[1]["width"] == 32


def test_words_split_on_whitespace_in_any_language(shards, tmp_path):
    out = str(tmp_path / "out")
    curate(shards, out, min_words=5, progress=False)
    got = fates(out)
    assert got[KEYS[6]] == ("filtered", "min_words")  # 猫 が 寝て いる: 4 words
    assert [k for k, fate in got.items() if fate == KEPT] == [KEYS[i] for i in (0, 2, 3, 4, 5)]


def test_several_captions_the_longest_counts(tmp_path):
    image = write(str(tmp_path / "raw" / "a.jpg"), jpeg(40, 30, seed=1))
    other = write(str(tmp_path / "raw" / "b.jpg"), jpeg(40, 30, seed=2))
    table = write_csv(tmp_path / "raw" / "captions.csv", [(image, "dog"), (image, "a brown dog runs"),
                                                          (other, "cat"), (other, "a cat")])
    convert([table], str(tmp_path / "shards"), image_size=24, progress=False)
    curate(str(tmp_path / "shards"), str(tmp_path / "out"), min_words=3, progress=False)
    assert list(fates(tmp_path / "out").values()) == [KEPT, ("filtered", "min_words")]
    assert reasons(tmp_path / "out")["000000001"] == "longest caption has 2 words < --min-words 3"
    assert read_shards(tmp_path / "out")["000000000"]["txt"] == b"dog\na brown dog runs"  # both captions kept


def test_size_of_the_stored_image_when_no_original_is_recorded(tmp_path):
    write_dataset(tmp_path / "ds", num_shards=2, per_shard=3)  # 40x32 JPEGs, KEY.json without sizes
    curate(str(tmp_path / "ds"), str(tmp_path / "a"), min_image_size=32, progress=False)
    curate(str(tmp_path / "ds"), str(tmp_path / "b"), min_image_size=33, progress=False)
    assert set(fates(tmp_path / "a").values()) == {KEPT}
    assert set(fates(tmp_path / "b").values()) == {("filtered", "min_image_size")}


def _lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_remove_list_matches_key_source_and_sha256s(shards, tmp_path):
    rows = input_rows(shards)
    stored = read_shards(shards)
    listed = _lines(tmp_path / "remove.txt", [
        "# Re-LAION-style list", "", rows[KEYS[0]]["sha256"].upper(),   # source bytes: items 0 and 4 (same bytes)
        KEYS[5],                                                         # a key
        hashlib.sha256(stored[KEYS[6]]["jpg"]).hexdigest(),               # the stored image bytes
        hashlib.sha256(rows[KEYS[7]]["source"].encode()).hexdigest(),     # the url string
        rows[KEYS[2]]["source"]])                                        # the source path itself
    out = str(tmp_path / "out")
    manifest = curate(shards, out, remove_list=listed, progress=False)
    assert [k for k, fate in fates(out).items() if fate == KEPT] == [KEYS[1], KEYS[3]]
    assert manifest["removed_by"] == {"remove_list": 6}
    why = reasons(out)
    assert why[KEYS[4]] == f"its sha256 of the source bytes is in --remove-list {listed}"
    assert why[KEYS[5]].startswith("its key is")
    assert why[KEYS[6]].startswith("its sha256 of the image bytes is")
    assert why[KEYS[7]].startswith("its sha256 of the url is")
    assert why[KEYS[2]].startswith("its source is")


def test_keep_list_then_other_filters(shards, tmp_path):
    listed = _lines(tmp_path / "keep.txt", [KEYS[1], KEYS[3], KEYS[6], "not-a-key"])
    out = str(tmp_path / "out")
    manifest = curate(shards, out, keep_list=listed, min_words=3, progress=False)
    got = fates(out)
    assert got[KEYS[1]] == ("filtered", "min_words") and got[KEYS[0]] == ("filtered", "keep_list")
    assert [k for k, fate in got.items() if fate == KEPT] == [KEYS[3], KEYS[6]]
    assert manifest["counts"] == {"success": 2, "filtered": 6}
    assert json.loads(open(os.path.join(out, "sizes.json")).read()) == {"shard-000000.tar": 2}


def test_an_unreadable_image_is_removed_as_failed_to_decode(tmp_path):
    write_dataset(tmp_path / "ds", num_shards=1, per_shard=2)
    path = tmp_path / "ds" / "shard-000000.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            data = b"not a jpeg" if member.name == "s000001.jpg" else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    curate(str(tmp_path / "ds"), str(tmp_path / "out"), min_image_size=8, progress=False)
    assert list(fates(tmp_path / "out").values()) == [KEPT, ("failed_to_decode", "min_image_size")]
    assert reasons(tmp_path / "out")["s000001"].startswith("image size unreadable (cannot identify image file")


def test_a_brace_pattern_of_some_shards(shards, tmp_path):
    manifest = curate(os.path.join(shards, "shard-{000000..000001}.tar"), str(tmp_path / "out"), progress=False)
    assert manifest["input_items"] == 6 and list(fates(tmp_path / "out")) == KEYS[:6]
