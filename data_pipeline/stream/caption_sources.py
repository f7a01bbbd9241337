"""data.caption_weights: which caption source a visit of a sample reads (KEY.txt, or KEY.NAME.txt written by
`clipforge convert --caption-col ... --caption-col NAME`), like open_clip's --json-text-key-probs.

The choice is a pure function of (seed, global sample position), as every draw of the loader is
(data_pipeline/stream/hashing.py): the same on any worker or rank, exactly repeated on resume, and new in every
epoch (a new position). Its own hash purpose keeps the crop and caption-line draws what they were without it.
A sample that lacks the chosen source reads KEY.txt instead; the loader counts those fallbacks per source.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from clipforge.data_pipeline.config import DataConfigError
from clipforge.data_pipeline.shards import PRIMARY_CAPTIONS, ShardSet, caption_sources
from clipforge.data_pipeline.stream import hashing


@dataclass(frozen=True)
class CaptionWeights:
    # Sorted names: the draws do not depend on the order the config happens to list them in.
    names: Tuple[str, ...]
    cumulative: Tuple[float, ...]

    @classmethod
    def of(cls, weights: Optional[Dict[str, float]]) -> "CaptionWeights":
        """None (no data.caption_weights) = the primary source at every visit."""
        if not weights:
            return cls((PRIMARY_CAPTIONS,), (1.0,))
        names = tuple(sorted(weights))
        shares = np.array([float(weights[name]) for name in names])
        return cls(names, tuple(np.cumsum(shares / shares.sum()).tolist()))

    def choose(self, seed: int, positions: Sequence[int]) -> List[str]:
        """The caption source of each global sample position."""
        if len(self.names) == 1:
            return [self.names[0]] * len(positions)
        draw = hashing.uniform(seed, hashing.CAPTION_SOURCE, np.asarray(positions, dtype=np.int64))
        picked = np.minimum(np.searchsorted(self.cumulative, draw, side="right"), len(self.names) - 1)
        return [self.names[i] for i in picked]


def check_known(weights: Optional[Dict[str, float]], paths: Sequence[str], shard_sets: Sequence[ShardSet]) -> None:
    """A weighted source that no source's manifest lists is a typo or the wrong data: refused before start.
    Tars without a manifest cannot say what they hold, so with one of those every name is accepted (a sample
    without the member falls back to KEY.txt, counted)."""
    if not weights or any(shard_set.manifest is None for shard_set in shard_sets):
        return
    listed = {path: caption_sources(shard_set.manifest) for path, shard_set in zip(paths, shard_sets)}
    known = {name for names in listed.values() for name in names}
    unknown = sorted(set(weights) - known)
    if unknown:
        have = "; ".join(f"{path}: {', '.join(names)}" for path, names in listed.items())
        raise DataConfigError(f"data.caption_weights names {', '.join(unknown)}, which no data.sources manifest "
                              f"lists (caption_sources: {have}); use those names, or convert with "
                              "--caption-col PRIMARY --caption-col NAME")


def check_text_store(weights: Optional[Dict[str, float]], text_store) -> None:
    """Stored text embeddings are of KEY.txt's lines: another source's caption would get the wrong vector."""
    others = sorted(set(weights or ()) - {PRIMARY_CAPTIONS})
    if text_store is not None and others:
        raise DataConfigError(f"data.caption_weights reads {', '.join(others)}, but the stored text embeddings "
                              f"({text_store[0]}) are of KEY.txt's captions only; drop those sources or the store")
