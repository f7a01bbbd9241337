"""data.hard_negatives K: each image's NegCLIP hard negatives, read from KEY.neg.txt (one caption per line, written
by `clipforge convert --neg-caption-col COL`) into batch["neg_tokens"] int64 [b, K, L], in file order.

The rule: the first K lines, cycled when a sample has fewer (such samples are counted: loader.negatives_padded);
a sample without KEY.neg.txt is skipped and counted as missing_hard_negatives, as any sample the loader cannot
train on. The same K at every visit: hard negatives are chosen by whoever wrote the column (NegCLIP swaps words of
the true caption), so there is nothing to draw. What the loss does with them: pretrain/loss.py.
"""
from typing import List, Optional, Sequence

from clipforge.data_pipeline.config import DataConfigError, HARD_NEGATIVES
from clipforge.data_pipeline.shards import ShardSet

MISSING_NEGATIVES = "missing_hard_negatives"  # a skip reason of loader.counters


def pick(lines: List[str], k: int) -> List[str]:
    """K negatives of one sample from its non-empty KEY.neg.txt lines: the first K, cycled when fewer."""
    return [lines[j % len(lines)] for j in range(k)]


def check_sources(k: int, paths: Sequence[str], shard_sets: Sequence[ShardSet], text_store: Optional[tuple]) -> None:
    """Refused before start, in one line: a source whose manifest says it was converted without hard negatives
    (tars without a manifest cannot say: their samples are checked one by one), and stored text embeddings
    (they hold KEY.txt's captions only; the negatives need the live tower)."""
    if k == 0:
        return
    for i, (path, shard_set) in enumerate(zip(paths, shard_sets)):
        if shard_set.manifest is not None and shard_set.manifest.get("hard_negatives") != HARD_NEGATIVES:
            raise DataConfigError(f"data.hard_negatives={k}: data.sources[{i}] ({path}) has no hard negatives "
                                  f"(its manifest names no KEY.{HARD_NEGATIVES}); convert it with --neg-caption-col "
                                  "COLUMN, or set data.hard_negatives=0")
    if text_store is not None:
        raise DataConfigError(f"data.hard_negatives={k} needs the live text tower, but stored text embeddings "
                              f"({text_store[0]}) hold KEY.txt's captions only; set model.text_cache=false")
