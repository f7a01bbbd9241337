"""The output side: kept samples resharded into tars (members copied byte for byte), a parquet per shard, the
fate table curation.parquet (one row per INPUT sample), sizes.json and, last, manifest.json.

Tar members carry the converter's fixed mtime/uid/mode, so the same curation gives byte-identical shards. Each
file is written atomically (clipforge/atomic.py): a reader never sees half a shard.
"""
import hashlib
import io
import json
import os
import tarfile
from typing import Dict, List, Optional

from clipforge.atomic import write_atomic
from clipforge.data_pipeline.convert.shard_writer import PARQUET_COLUMNS
from clipforge.data_pipeline.shards import shard_name
from clipforge.data_pipeline.tar_members import write_member
from .filters import Fate
from .options import CurateError
from .samples import Sample

FATE_COLUMNS = ("key", "source", "input_shard", "status", "filter", "error_message", "output_shard")
SIZE_COLUMNS = ("width", "height", "original_width", "original_height")


def check_out_dir(out_dir: str) -> None:
    """A new or empty folder only: curating into a dataset (the input's included) would mix two of them."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CurateError(f"--out {out_dir}: is an existing file; give a new or empty folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise CurateError(f"--out {out_dir}: is not empty; give a new or empty folder (curate never overwrites)")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise CurateError(f"--out {out_dir}: cannot create the folder ({error.strerror}); give a writable path")


def _tar_bytes(samples: List[Sample]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for extension, data in sample.members.items():
                write_member(tar, f"{sample.key}.{extension}", data)
    return buffer.getvalue()


def _size(meta: dict, name: str) -> Optional[int]:
    value = meta.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parquet_bytes(columns: Dict[str, list], types: Dict[str, object]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.table({name: pa.array(values, types.get(name, pa.string())) for name, values in columns.items()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def shard_parquet(samples: List[Sample]) -> bytes:
    """convert's columns for the kept samples (all 'success'), so verify and img2dataset tooling read it."""
    import pyarrow as pa
    rows = [{"key": s.key, "source": s.source, "url": s.source, "caption": "\n".join(s.captions), "status": "success",
             "error_message": "", "sha256": s.meta.get("sha256"), **{n: _size(s.meta, n) for n in SIZE_COLUMNS}}
            for s in samples]
    columns = {name: [row[name] for row in rows] for name in PARQUET_COLUMNS}
    return _parquet_bytes(columns, {name: pa.int32() for name in SIZE_COLUMNS})


class ShardsOut:
    """Fills output shards of `per_shard` kept samples, writing each as soon as it is full."""

    def __init__(self, out_dir: str, per_shard: int):
        self.out_dir, self.per_shard = out_dir, per_shard
        self.pending: List[Sample] = []
        self.shards: List[dict] = []  # the manifest's entries

    def add(self, sample: Sample) -> str:
        """-> the name of the shard the sample goes to."""
        name = shard_name(len(self.shards)) + ".tar"
        self.pending.append(sample)
        if len(self.pending) == self.per_shard:
            self.flush()
        return name

    def flush(self) -> None:
        if not self.pending:
            return
        name = shard_name(len(self.shards))
        data = _tar_bytes(self.pending)
        write_atomic(os.path.join(self.out_dir, name + ".parquet"), shard_parquet(self.pending))
        write_atomic(os.path.join(self.out_dir, name + ".tar"), data)
        self.shards.append({"name": name + ".tar", "samples": len(self.pending), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        self.pending = []


class FateTable:
    """curation.parquet: every input sample, in input order, with its fate."""

    def __init__(self):
        self.columns: Dict[str, list] = {name: [] for name in FATE_COLUMNS}

    def add(self, sample: Sample, fate: Optional[Fate], output_shard: Optional[str]) -> None:
        row = {"key": sample.key, "source": sample.source, "input_shard": sample.shard,
               "status": fate.status if fate else "success", "filter": fate.filter if fate else None,
               "error_message": fate.reason if fate else "", "output_shard": output_shard}
        for name in FATE_COLUMNS:
            self.columns[name].append(row[name])

    def write(self, out_dir: str) -> None:
        write_atomic(os.path.join(out_dir, "curation.parquet"), _parquet_bytes(self.columns, {}))


def write_json(path: str, value) -> None:
    write_atomic(path, json.dumps(value, indent=1, ensure_ascii=False))
