"""Write one shard: KEY.jpg/KEY.txt[/KEY.NAME.txt...]/KEY.json adjacent in a tar, a parquet row per input item,
a stats json.

Byte-identical across runs: members carry a fixed mtime/uid/gid/mode and no user names. Every file goes to a hidden
temporary name first and is renamed into place; the stats json is renamed LAST and marks the shard complete.
"""
import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from typing import List, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from clipforge.atomic import leftover_temporaries, write_atomic
from clipforge.data_pipeline.shards import shard_name
from clipforge.data_pipeline.tar_members import write_member
from .options import parquet_caption_column

# "url" repeats "source" under img2dataset's name, so tooling written for its parquets reads ours as-is.
PARQUET_COLUMNS = ("key", "source", "url", "caption", "status", "error_message", "width", "height",
                   "original_width", "original_height", "sha256")


def stats_path(out_dir: str, index: int) -> str:
    return os.path.join(out_dir, f"{shard_name(index)}_stats.json")


def sample_json(result: dict) -> bytes:
    record = {"key": result["key"], "source": result["source"], "captions": result["captions"],
              "width": result["width"], "height": result["height"], "original_width": result["original_width"],
              "original_height": result["original_height"], "sha256": result["sha256"], **result["extra"]}
    return json.dumps(record, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8")


def _tar_bytes(results: List[dict], extension: str, one_caption_per_txt: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for result in results:
            if result["status"] != "success":
                continue
            write_member(tar, f"{result['key']}.{extension}", result["data"])
            # KEY.json always lists every caption; KEY.txt all of them, or only the first for open_clip's trainer.
            captions = result["captions"][:1] if one_caption_per_txt else result["captions"]
            write_member(tar, f"{result['key']}.txt", "\n".join(captions).encode("utf-8"))
            for name, lines in result["caption_sources"].items():  # further sources: KEY.NAME.txt, every line
                write_member(tar, f"{result['key']}.{name}", "\n".join(lines).encode("utf-8"))
            write_member(tar, f"{result['key']}.json", sample_json(result))
    return buffer.getvalue()


def _column(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in a kept column: keep them as text
        return pa.array([None if value is None else str(value) for value in values], pa.string())


def _source_captions(result: dict, source: str) -> Optional[str]:
    """An extra caption source's parquet cell: its cleaned lines, else (item rejected) the raw text, else None."""
    if source in result["caption_sources"]:
        return "\n".join(result["caption_sources"][source])
    return result["raw_caption_sources"].get(source) if result["status"] != "success" else None


def _parquet_bytes(results: List[dict], keep_cols: List[str], caption_sources: Sequence[str]) -> bytes:
    columns = {name: [] for name in PARQUET_COLUMNS}
    for result in results:
        row = dict(result, url=result["source"],
                   caption="\n".join(result["captions"]) if result["captions"] else result["raw_caption"])
        for name in PARQUET_COLUMNS:
            columns[name].append(row[name])
    types = {"width": pa.int32(), "height": pa.int32(), "original_width": pa.int32(), "original_height": pa.int32()}
    arrays = {name: pa.array(values, types.get(name, pa.string())) for name, values in columns.items()}
    for source in caption_sources:
        arrays[parquet_caption_column(source)] = pa.array([_source_captions(r, source) for r in results], pa.string())
    for name in keep_cols:
        arrays[name] = _column([result["extra"].get(name) for result in results])
    buffer = io.BytesIO()
    pq.write_table(pa.table(arrays), buffer)
    return buffer.getvalue()


def write_shard(out_dir: str, index: int, results: List[dict], extension: str, keep_cols: List[str],
                one_caption_per_txt: bool = False, caption_sources: Sequence[str] = ()) -> dict:
    """caption_sources: the extensions of the further caption sources (every shard's parquet has their columns)."""
    name = shard_name(index)
    tar_data = _tar_bytes(results, extension, one_caption_per_txt)
    write_atomic(os.path.join(out_dir, name + ".parquet"), _parquet_bytes(results, keep_cols, caption_sources))
    write_atomic(os.path.join(out_dir, name + ".tar"), tar_data)
    counts = Counter(result["status"] for result in results)
    errors = Counter(f"{result['status']}: {result['reason']}" for result in results if result["status"] != "success")
    stats = {"shard": name + ".tar", "input_items": len(results), "samples": counts.get("success", 0),
             "counts": dict(sorted(counts.items())), "errors": dict(sorted(errors.items())),
             "bytes": len(tar_data), "sha256": hashlib.sha256(tar_data).hexdigest()}
    write_atomic(stats_path(out_dir, index), json.dumps(stats, indent=1, sort_keys=True))
    return stats


def remove_temporaries(out_dir: str, indices) -> None:
    """Temporaries a killed run left for shards about to be redone (the redo would overwrite them anyway)."""
    for index in indices:
        for suffix in (".tar", ".parquet", "_stats.json"):
            for path in leftover_temporaries(os.path.join(out_dir, shard_name(index) + suffix)):
                os.remove(path)


def read_stats(out_dir: str, index: int):
    """The stats of a COMPLETE shard (stats json present and the tar has the recorded size), else None."""
    try:
        with open(stats_path(out_dir, index), encoding="utf-8") as handle:
            stats = json.load(handle)
        tar_size = os.path.getsize(os.path.join(out_dir, shard_name(index) + ".tar"))
        parquet_ok = os.path.isfile(os.path.join(out_dir, shard_name(index) + ".parquet"))
    except (OSError, ValueError):
        return None
    return stats if tar_size == stats.get("bytes") and parquet_ok else None
