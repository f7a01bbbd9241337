"""A converted shard dataset with known curation answers (made by the real converter from real JPEGs).

Item i -> key 00000000i. Sizes are the ORIGINAL images' (convert stores them resized to a shorter side of 32):
  0  64x48  "a red bus on the street"        6 words
  1  64x48  "bus"                            1 word
  2  20x20  "a small square picture here"    5 words (stored enlarged to 32x32)
  3  200x40 "a very wide panorama of hills"  6 words, aspect ratio 5
  4  64x48  "the same bus again today"       5 words, the SAME source bytes as item 0
  5  48x64  "two dogs play in snow"          5 words
  6  64x64  "猫 が 寝て いる"                 4 words by whitespace
  7  64x48  "a photo"                        2 words
"""
import os

import pyarrow.parquet as pq

from clipforge.data_pipeline.convert import convert

from .convert_inputs import jpeg, write, write_csv

ITEMS = [((64, 48), 0, "a red bus on the street"), ((64, 48), 1, "bus"), ((20, 20), 2, "a small square picture here"),
         ((200, 40), 3, "a very wide panorama of hills"), ((64, 48), 0, "the same bus again today"),
         ((48, 64), 5, "two dogs play in snow"), ((64, 64), 6, "猫 が 寝て いる"), ((64, 48), 7, "a photo")]
KEYS = [f"{i:09d}" for i in range(len(ITEMS))]


def converted(folder) -> str:
    """folder/raw (images + captions.csv) -> folder/shards (3 items per shard); returns the shards dir."""
    rows = []
    for i, ((width, height), seed, caption) in enumerate(ITEMS):
        rows.append((write(os.path.join(folder, "raw", f"img{i}.jpg"), jpeg(width, height, seed)), caption))
    table = write_csv(os.path.join(folder, "raw", "captions.csv"), rows)
    out = os.path.join(folder, "shards")
    convert([table], out, image_size=32, samples_per_shard=3, progress=False)
    return out


def fates(out) -> dict:
    """key -> (status, filter) from curation.parquet, which must list the keys in input order."""
    rows = pq.read_table(os.path.join(out, "curation.parquet")).to_pylist()
    return {row["key"]: (row["status"], row["filter"]) for row in rows}


def reasons(out) -> dict:
    """key -> error_message from curation.parquet."""
    rows = pq.read_table(os.path.join(out, "curation.parquet")).to_pylist()
    return {row["key"]: row["error_message"] for row in rows}


def input_rows(shards) -> dict:
    """key -> the converter's parquet row (source, sha256, ...)."""
    rows = {}
    for name in sorted(os.listdir(shards)):
        if name.endswith(".parquet"):
            rows.update({row["key"]: row for row in pq.read_table(os.path.join(shards, name)).to_pylist()})
    return rows
