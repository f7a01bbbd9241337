"""Spherical k-means over unit embeddings: SemDeDup's clusters, inside which near-duplicates are searched.

Near-duplicates are close in cosine, so they nearly always share their nearest centroid; comparing a sample only
with the kept samples of its own cluster turns the exact search's O(N x kept) into about O(N x kept / K). What it
can miss is a pair split across a cluster boundary: the price SemDeDup pays too (docs/convert.md "Curation").

numpy, not faiss-cpu: the whole method is ~20 matrix products of [rows, dim] x [dim, K], which numpy's BLAS runs
as fast, and a dependency of ~30 MB for them would buy nothing. Every random choice comes from one seeded
generator, so the same vectors, K and seed give the same clusters (tests/data_pipeline/test_curate_clusters.py).
"""
import numpy as np

# faiss's default: k-means is trained on at most 256 x K samples, enough to place K centroids; every sample is
# then assigned to its nearest centroid in one more pass.
TRAIN_PER_CLUSTER = 256
ITERATIONS = 20
# rows assigned per matrix product: 65,536 x 1,000 clusters x 4 bytes = 262 MB of similarities at most
ASSIGN_BLOCK = 65536


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """[rows] index of each unit row's most similar centroid (cosine; ties: the lower index)."""
    return np.concatenate([np.argmax(np.asarray(vectors[start:start + ASSIGN_BLOCK]) @ centroids.T, axis=1)
                           for start in range(0, len(vectors), ASSIGN_BLOCK)] or [np.zeros(0, np.int64)])


def _seed_centroids(train: np.ndarray, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centroid drawn with probability ~ squared distance to the nearest one chosen
    (2 - 2 cos for unit rows). Uniform seeding puts two centroids in one tight group and none in another often
    enough that Lloyd's iterations merge groups (it did on the test's 6 planted groups); K passes over the sample
    cost about one iteration."""
    chosen = [int(rng.integers(len(train)))]
    distance = np.maximum(2 - 2 * (train @ train[chosen[0]]).astype(np.float64), 0)
    for _ in range(1, clusters):
        total = distance.sum()
        pick = int(rng.choice(len(train), p=distance / total)) if total > 0 else int(rng.integers(len(train)))
        chosen.append(pick)
        distance = np.minimum(distance, np.maximum(2 - 2 * (train @ train[pick]).astype(np.float64), 0))
    return np.array(train[chosen], dtype=np.float32)


def spherical_kmeans(vectors: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """[clusters, dim] unit centroids of the unit rows of `vectors` (float32)."""
    rng = np.random.default_rng(seed)
    count = len(vectors)
    train = np.asarray(vectors[np.sort(rng.choice(count, size=min(count, clusters * TRAIN_PER_CLUSTER),
                                                  replace=False))])
    centroids = _seed_centroids(train, clusters, rng)
    for _ in range(ITERATIONS):
        assigned = nearest_centroid(train, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assigned, train)
        norms = np.linalg.norm(sums, axis=1)
        moved = norms > 0  # a cluster left empty keeps its centroid (it may win samples back next round)
        centroids[moved] = sums[moved] / norms[moved, None]
    return centroids


def cluster_ids(vectors: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """[samples] cluster of each unit row; clusters <= 1: all in cluster 0 (the exact search over every kept one)."""
    if clusters <= 1:
        return np.zeros(len(vectors), np.int64)
    return nearest_centroid(vectors, spherical_kmeans(vectors, clusters, seed))
