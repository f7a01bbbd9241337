"""The global sample sequence: which sample sits at each global position, for every step of the run.

It depends only on (seed, data, weights, shuffle window, global batch size) — never on ranks or
workers — so every rank computes the same sequence and takes its own contiguous slice of each
global batch, and a resumed run continues it exactly from the saved position.

Each source is walked as an endless chain of "source epochs". Its k-th epoch is a seeded list of
its shards — a shuffle of all of them (epoch mode), or as many draws with replacement, each shard
equally likely (resampled mode: every sample equally likely, like webdataset's ResampledShards) —
their samples concatenated, then permuted inside consecutive windows of W samples (one seeded
permutation per window, made when first needed: O(W) memory, never an O(N) array). Reading stays
local (a window spans a few shards), which matters at LAION scale.
Mixing: global position p takes its source from a seeded draw weighted by the source weights; each
source hands out its next sample. Per source, the cursor (epoch, offset) is part of the loader state.
"""
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from clipforge.data_pipeline.stream import hashing


class SourceOrder:
    """One source's sample sequence: cursor (epoch, offset) -> (shard index, index inside the shard)."""

    def __init__(self, source: int, sizes: Sequence[int], seed: int, window: int, resampled: bool):
        self.source, self.seed, self.window, self.resampled = source, seed, window, resampled
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.num_samples = int(self.sizes.sum())
        self._perms: "OrderedDict[Tuple[int, int], np.ndarray]" = OrderedDict()
        self._orders: "OrderedDict[int, Tuple[np.ndarray, np.ndarray]]" = OrderedDict()

    @staticmethod
    def _cached(cache: OrderedDict, key, make, keep: int):
        if key not in cache:
            cache[key] = make()
            while len(cache) > keep:
                cache.popitem(last=False)
        return cache[key]

    def shard_order(self, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        """(shard indices in this epoch's order, cumulative sample counts along it)."""
        def make():
            rng = hashing.rng(self.seed, hashing.SHARD_SHUFFLE, self.source, epoch)
            n = len(self.sizes)
            order = rng.integers(0, n, size=n) if self.resampled else rng.permutation(n)
            return order, np.cumsum(self.sizes[order])
        return self._cached(self._orders, epoch, make, keep=2)

    def epoch_length(self, epoch: int) -> int:
        return self.num_samples if not self.resampled else int(self.shard_order(epoch)[1][-1])

    def _window_perm(self, epoch: int, window: int, length: int) -> np.ndarray:
        size = min(self.window, length - window * self.window)
        make = lambda: hashing.rng(self.seed, hashing.WINDOW_SHUFFLE, self.source, epoch, window).permutation(size)
        return self._cached(self._perms, (epoch, window), make, keep=8)

    def _locate_in_epoch(self, epoch: int, within: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        length = self.epoch_length(epoch)
        flat = within.copy()
        if self.window > 1:
            windows = flat // self.window
            for w in np.unique(windows):
                m = windows == w
                flat[m] = w * self.window + self._window_perm(epoch, int(w), length)[flat[m] - w * self.window]
        order, cum = self.shard_order(epoch)
        k = np.searchsorted(cum, flat, side="right")
        return order[k], flat - (cum[k] - self.sizes[order[k]])

    def take(self, cursor: Sequence[int], count: int) -> Tuple[np.ndarray, np.ndarray, List[int]]:
        """The next `count` samples from cursor [epoch, offset]: (shards, indices, cursor after)."""
        epoch, offset = int(cursor[0]), int(cursor[1])
        shards, indices = [], []
        while count > 0:
            length = self.epoch_length(epoch)
            n = min(count, length - offset)
            sh, ix = self._locate_in_epoch(epoch, np.arange(offset, offset + n, dtype=np.int64))
            shards.append(sh)
            indices.append(ix)
            count, offset = count - n, offset + n
            if offset == length:
                epoch, offset = epoch + 1, 0
        empty = np.empty(0, dtype=np.int64)
        return (np.concatenate(shards) if shards else empty, np.concatenate(indices) if indices else empty,
                [epoch, offset])


@dataclass
class BatchRequest:
    """What one rank asks its loader workers for: one step's slice of the global batch."""
    step: int
    # [k, 4] int64 rows: global position, source index, shard index, index inside the shard.
    items: np.ndarray
    # The loader state once this batch has been consumed (what a checkpoint after it saves).
    state_after: Dict = field(default_factory=dict)


class SamplePlan:
    def __init__(self, source_sizes: List[Sequence[int]], weights: Sequence[float], *, mode: str, seed: int,
                 window: int, global_batch_size: int, drop_last: bool):
        self.seed, self.mode, self.drop_last = seed, mode, drop_last
        self.global_batch_size = global_batch_size
        self.sources = [SourceOrder(i, sizes, seed, window, mode == "resampled") for i, sizes in enumerate(source_sizes)]
        w = np.asarray(weights, dtype=np.float64)
        self._cum_weights = np.cumsum(w / w.sum())
        self.samples_per_epoch = sum(s.num_samples for s in self.sources)
        full, rest = divmod(self.samples_per_epoch, global_batch_size)
        if mode == "resampled":  # epochs are nominal (N samples drawn), batches always full
            full, drop_last = max(1, full), True
        self.steps_per_epoch = full if (drop_last or rest == 0) else full + 1
        # Positions one epoch spans: with drop_last the N % B left-over positions are not skipped
        # samples — the sources' sequences simply continue into the next epoch.
        self.positions_per_epoch = full * global_batch_size if drop_last else self.samples_per_epoch

    def initial_state(self) -> Dict:
        return {"step": 0, "position": 0, "consumed": [0] * len(self.sources),
                "cursors": [[0, 0] for _ in self.sources]}

    def batch_size_at(self, step: int) -> int:
        in_epoch = step % self.steps_per_epoch
        return min(self.global_batch_size, self.positions_per_epoch - in_epoch * self.global_batch_size)

    def choose_sources(self, positions: np.ndarray) -> np.ndarray:
        if len(self.sources) == 1:
            return np.zeros(len(positions), dtype=np.int64)
        draw = hashing.uniform(self.seed, hashing.SOURCE_DRAW, positions)
        return np.minimum(np.searchsorted(self._cum_weights, draw, side="right"), len(self.sources) - 1)

    def global_batch(self, state: Dict) -> Tuple[np.ndarray, np.ndarray, Dict]:
        """The next step's global batch: [B, 4] rows (position, source, shard, index) and the state after it."""
        step, position, consumed = state["step"], state["position"], list(state["consumed"])
        cursors = [list(c) for c in state["cursors"]]
        size = self.batch_size_at(step)
        positions = np.arange(position, position + size, dtype=np.int64)
        sources = self.choose_sources(positions)
        rows = np.empty((size, 4), dtype=np.int64)
        rows[:, 0], rows[:, 1] = positions, sources
        for s, order in enumerate(self.sources):
            mask = sources == s
            count = int(mask.sum())
            if count:
                rows[mask, 2], rows[mask, 3], cursors[s] = order.take(cursors[s], count)
                consumed[s] += count
        after = {"step": step + 1, "position": position + size, "consumed": consumed, "cursors": cursors}
        return rows, sources, after

    def requests(self, state: Dict, rank: int, world_size: int) -> Iterator[BatchRequest]:
        """This rank's slices from `state` to the end of its epoch (rank r: rows [r*b/w, (r+1)*b/w))."""
        end = (state["step"] // self.steps_per_epoch + 1) * self.steps_per_epoch
        while state["step"] < end:
            rows, _, after = self.global_batch(state)
            size = len(rows)
            lo, hi = rank * size // world_size, (rank + 1) * size // world_size
            yield BatchRequest(state["step"], rows[lo:hi], after)
            state = after
