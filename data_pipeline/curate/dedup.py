"""Near-duplicate removal from precomputed embeddings (SemDeDup's criterion: cosine similarity of embeddings).

Greedy in input order: a sample that passed every other filter is removed when its cosine similarity to a sample
already KEPT is at least the threshold, else it is kept. So the first sample of each near-duplicate group is
kept, every removed sample names a kept one (its reason), and the result depends on nothing but the input order
(and, with --dedup-clusters, the seeded clusters). Samples are decided in blocks, each compared with the samples
kept before it in one float32 matrix product (compared with 1e-6 of slack so that copies reach a threshold of 1.0),
then in order within the block. Without clusters the search is exact, O(samples x kept x dim); with K k-means
clusters (clusters.py, SemDeDup's) a sample is compared only with the kept samples of its own cluster, ~K x less.
"""
from typing import List, Optional

import numpy as np

from .filters import Fate
from .options import CurateError
from .side_files import keyed_column

# float32 rounding: the cosine of a vector with itself can come out 1 - 6e-8
SLACK = 1e-6


def _from_npy(path: str, count: int) -> np.ndarray:
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)  # files are data, never pickled code
    except (OSError, ValueError) as error:
        raise CurateError(f"--embeddings {path}: not a readable .npy ({error})") from None
    if vectors.ndim != 2 or vectors.shape[0] != count:
        raise CurateError(f"--embeddings {path}: shape {tuple(vectors.shape)}, expected ({count}, dim): one row "
                          "per input sample, in the dataset's sample order (or give a parquet with a 'key' column)")
    return vectors


def _from_parquet(path: str, column: str, keys: List[str]) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc
    values = keyed_column(path, "--embeddings", column, keys)
    kind = values.type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    lengths = set(pc.list_value_length(values).to_pylist()) if is_list else set()
    if len(lengths) != 1 or None in lengths:
        raise CurateError(f"--embeddings {path}: column {column!r} must hold one list of floats of the same "
                          f"length per key (found {values.type}, lengths {sorted(map(str, lengths))[:3]})")
    return values.flatten().to_numpy(zero_copy_only=False).reshape(len(keys), lengths.pop())


def load_embeddings(path: str, column: str, keys: List[str]) -> np.ndarray:
    """[input samples, dim] float32, unit rows, in input order."""
    vectors = _from_npy(path, len(keys)) if path.endswith(".npy") else _from_parquet(path, column, keys)
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~(norms > 0) | ~np.isfinite(norms))
    if bad.size:
        raise CurateError(f"--embeddings {path}: {bad.size} rows are zero or not finite (e.g. key {keys[bad[0]]}): "
                          "a cosine needs a direction")
    return vectors / norms[:, None]


class NearDuplicates:
    def __init__(self, vectors: np.ndarray, keys: List[str], threshold: float, clusters: Optional[np.ndarray] = None):
        """clusters: [samples] cluster of each sample (None: one cluster, the exact search)."""
        self.vectors, self.keys, self.threshold = vectors, keys, threshold
        self.clusters = np.zeros(len(vectors), np.int64) if clusters is None else clusters
        sizes = np.bincount(self.clusters, minlength=1)
        # per cluster, rows 0..kept_count-1: its kept samples' vectors and input indices, in order (N x dim in all)
        self.kept = [np.empty((size, vectors.shape[1]), np.float32) for size in sizes]
        self.kept_index = [np.empty(size, np.int64) for size in sizes]
        self.kept_count = np.zeros(len(sizes), np.int64)

    def _nearest_kept(self, block: np.ndarray, block_clusters: np.ndarray):
        """(similarity, input index) of each block row's most similar sample kept, in its cluster, before the block."""
        best, twin = np.full(len(block), -np.inf, np.float32), np.zeros(len(block), np.int64)
        for cluster in np.unique(block_clusters):
            count = self.kept_count[cluster]
            if not count:
                continue
            rows = np.flatnonzero(block_clusters == cluster)
            similarities = block[rows] @ self.kept[cluster][:count].T  # the cost of the whole method
            nearest = np.argmax(similarities, axis=1)
            best[rows] = similarities[np.arange(len(rows)), nearest]
            twin[rows] = self.kept_index[cluster][nearest]
        return best, twin

    def _keep(self, index: int, vector: np.ndarray) -> None:
        cluster = self.clusters[index]
        count = self.kept_count[cluster]
        self.kept[cluster][count], self.kept_index[cluster][count] = vector, index
        self.kept_count[cluster] += 1

    def check_block(self, indices: List[int]) -> List[Optional[Fate]]:
        """The fates of consecutive samples the other filters kept (input indices, in order): each is compared
        with every sample of its cluster kept before it, those kept earlier in this block included; None = kept."""
        block, block_clusters = self.vectors[indices], self.clusters[indices]
        best, twin = self._nearest_kept(block, block_clusters)
        within = block @ block.T
        within[block_clusters[:, None] != block_clusters[None, :]] = -np.inf  # other clusters are never compared
        fates: List[Optional[Fate]] = []
        kept_here: List[int] = []  # positions in the block
        for position, index in enumerate(indices):
            similarity, nearest = best[position], twin[position]
            if kept_here:
                closest = int(np.argmax(within[position, kept_here]))
                if within[position, kept_here[closest]] > similarity:
                    similarity, nearest = within[position, kept_here[closest]], indices[kept_here[closest]]
            if similarity >= self.threshold - SLACK:
                fates.append(Fate("duplicate", "dedup", f"near-duplicate of kept sample {self.keys[nearest]} (cosine "
                                  f"{similarity:.4f} >= --dedup-threshold {self.threshold:g})"))
                continue
            fates.append(None)
            kept_here.append(position)
        for position in kept_here:
            self._keep(indices[position], block[position])
        return fates
