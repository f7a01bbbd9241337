"""Merge: once every shard of the plan is complete, write sizes.json and (last, atomically) manifest.json.

Idempotent and deterministic: any node may run it, any number of times; the files only depend on the shards.
"""
import json
import os
from collections import Counter
from typing import List

from clipforge.atomic import write_atomic
from clipforge.data_pipeline.shards import HARD_NEGATIVES, PRIMARY_CAPTIONS, caption_source_name, shard_name
from .options import ConvertError
from .plan import in_current_terms, load_plan
from .shard_writer import read_stats

VERSION = "0.1.0"


def missing_shards(out_dir: str, num_shards: int) -> List[int]:
    return [index for index in range(num_shards) if read_stats(out_dir, index) is None]


def _write_json(path: str, value) -> None:
    write_atomic(path, json.dumps(value, indent=1, ensure_ascii=False))


def merge(out_dir: str) -> dict:
    plan = load_plan(out_dir)
    missing = missing_shards(out_dir, plan["num_shards"])
    if missing:
        names = ", ".join(shard_name(index) for index in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ConvertError(f"{out_dir}: {len(missing)} of {plan['num_shards']} shards are not complete ({names}); "
                           "run every node's convert command again (complete shards are skipped), then merge")
    shards, counts = [], Counter()
    for index in range(plan["num_shards"]):
        stats = read_stats(out_dir, index)
        shards.append({"name": stats["shard"], "samples": stats["samples"], "bytes": stats["bytes"],
                       "sha256": stats["sha256"]})
        counts.update(stats["counts"])
    options = in_current_terms(plan["options"])
    manifest = {
        "format": "clipforge-shards", "version": 1,
        "num_samples": sum(shard["samples"] for shard in shards),
        "input_items": plan["num_items"],
        "shards": shards,
        "counts": dict(sorted(counts.items())),
        "image": {"size": options["image_size"], "resize_mode": options["resize_mode"],
                  "encode_format": options["encode_format"], "quality": options["quality"]},
        # "first": KEY.txt holds one caption (open_clip's trainer joins lines), KEY.json "captions" all of them.
        "txt_captions": "first" if options.get("one_caption_per_txt") else "all",
        # KEY.txt (the primary) and the member extension of every further --caption-col (data_pipeline/shards.py)
        "caption_sources": [PRIMARY_CAPTIONS] + [caption_source_name(column) for column in options["caption_col"][1:]],
        "created_by": {"version": VERSION, "config": options},
    }
    if options["neg_caption_col"]:  # KEY.neg.txt (--neg-caption-col): what data.hard_negatives reads
        manifest["hard_negatives"] = HARD_NEGATIVES
    if sum(counts.values()) != plan["num_items"]:
        raise ConvertError(f"{out_dir}: shard stats count {sum(counts.values())} items but the plan has "
                           f"{plan['num_items']}: the shards come from another run; convert into an empty --out")
    _write_json(os.path.join(out_dir, "sizes.json"), {shard["name"]: shard["samples"] for shard in shards})
    _write_json(os.path.join(out_dir, "manifest.json"), manifest)
    return manifest
