"""Precomputed per-sample files (scores, embeddings) matched to the input samples by key."""
from typing import List, Sequence

import numpy as np

from .options import CurateError


def read_columns(path: str, flag: str, columns: Sequence[str]):
    """The parquet's `columns`; CurateError naming the file and the columns it does have otherwise."""
    import pyarrow.parquet as pq
    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError) as error:  # pyarrow's errors derive from these: not a parquet, damaged
        raise CurateError(f"{flag} {path}: not a readable parquet ({error})") from None
    missing = [name for name in columns if name not in names]
    if missing:
        raise CurateError(f"{flag} {path}: no column {', '.join(map(repr, missing))} (it has {', '.join(names)})")
    return pq.read_table(path, columns=list(columns))


def align(file_keys: List[str], keys: List[str], path: str, flag: str) -> np.ndarray:
    """Row of the file for each input key, in input order. Extra rows are ignored (scores of a larger pool);
    a repeated key or an input sample without a row is refused, since guessing either would filter wrongly."""
    rows = {}
    for row, key in enumerate(file_keys):
        if key in rows:
            raise CurateError(f"{flag} {path}: key {key} has two rows (rows {rows[key]} and {row}); keep one")
        rows[key] = row
    missing = [key for key in keys if key not in rows]
    if missing:
        raise CurateError(f"{flag} {path}: no row for {len(missing)} of the {len(keys)} input samples "
                          f"(e.g. key {', '.join(missing[:3])}); compute it for every sample of the dataset")
    return np.asarray([rows[key] for key in keys], dtype=np.int64)


def keyed_column(path: str, flag: str, column: str, keys: List[str]):
    """The parquet's `column` as an arrow array, one entry per input key, in input order."""
    table = read_columns(path, flag, ["key", column])
    order = align([str(key) for key in table.column("key").to_pylist()], keys, path, flag)
    return table.column(column).combine_chunks().take(order)
