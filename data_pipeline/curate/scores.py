"""Score filters on a precomputed column (e.g. CLIP image-text cosine): --min-score and --top-fraction.

The scores parquet has a `key` column (the shard key) and the score column; data_pipeline never loads a model,
so any scorer that writes that file plugs in. --top-fraction is a pool-level rank, as DataComp's CLIP-score
filter: the floor(F x N) best of the N input samples pass, whatever the other filters remove.
"""
import math
from typing import Dict, List

import numpy as np

from .filters import Fate
from .options import CurateError, CurateOptions
from .side_files import keyed_column


def load_scores(path: str, column: str, keys: List[str]) -> np.ndarray:
    values = keyed_column(path, "--scores", column, keys)
    try:
        scores = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    except (TypeError, ValueError):
        raise CurateError(f"--scores {path}: column {column!r} is {values.type}, not numbers") from None
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise CurateError(f"--scores {path}: {column!r} is missing or not finite for {bad.size} samples "
                          f"(e.g. key {keys[bad[0]]}); score every sample")
    return scores


def top_count(fraction: float, total: int) -> int:
    """floor(fraction x total), immune to 0.29 * 100 = 28.999...: what the help promises."""
    return min(total, int(math.floor(fraction * total + 1e-9)))


def score_fates(options: CurateOptions, keys: List[str]) -> Dict[int, Fate]:
    """Input sample index -> its Fate, for the samples the score filters remove (--min-score checked first)."""
    if not options.scores:
        return {}
    scores = load_scores(options.scores, options.score_column, keys)
    column = options.score_column
    fates: Dict[int, Fate] = {}
    if options.top_fraction is not None:
        keep = top_count(options.top_fraction, len(keys))
        order = np.argsort(-scores, kind="stable")  # stable: equal scores rank in input order
        cut = f"{scores[order[keep - 1]]:.6g}" if keep else "none kept"
        for index in order[keep:]:
            fates[int(index)] = Fate("filtered", "top_fraction", f"{column} {scores[index]:.6g} is not among the "
                                     f"best {keep} of {len(keys)} (--top-fraction {options.top_fraction:g}; "
                                     f"lowest kept: {cut})")
    if options.min_score is not None:
        for index in np.flatnonzero(scores < options.min_score):
            fates[int(index)] = Fate("filtered", "min_score", f"{column} {scores[index]:.6g} < --min-score "
                                     f"{options.min_score:g}")
    return fates
