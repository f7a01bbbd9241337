"""SemDeDup-style clustered near-duplicate removal (--dedup-clusters): the seeded spherical k-means finds planted
groups, and the clustered search equals a naive greedy reference that compares each sample with every earlier
kept sample of its cluster, across block boundaries and through `curate`."""
import numpy as np
import pytest

from clipforge.data_pipeline.curate import CurateError, curate
from clipforge.data_pipeline.curate.clusters import cluster_ids
from clipforge.data_pipeline.curate.dedup import SLACK, NearDuplicates

from .curate_inputs import KEYS, converted, fates


def unit(vectors):
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def planted(seed, groups=6, members=30, dim=32, noise=0.15):
    """`groups` random directions, `members` noisy copies of each (cosine ~0.95 to their direction), shuffled."""
    rng = np.random.default_rng(seed)
    group = rng.permutation(np.repeat(np.arange(groups), members))
    return unit(rng.normal(size=(groups, dim))[group] + noise * rng.normal(size=(len(group), dim))), group


def naive_greedy(vectors, clusters, threshold):
    """Input order; each sample against every kept earlier sample of its own cluster: (kept indices, index -> twin)."""
    kept, twins = [], {}
    for i, vector in enumerate(vectors):
        rivals = [j for j in kept if clusters[j] == clusters[i]]
        similarities = [float(vectors[j] @ vector) for j in rivals]
        if similarities and max(similarities) >= threshold - SLACK:
            twins[i] = rivals[int(np.argmax(similarities))]
        else:
            kept.append(i)
    return kept, twins


def test_kmeans_finds_the_planted_groups_and_is_a_function_of_the_seed():
    vectors, group = planted(seed=1)
    for seed in (0, 1):
        clusters = cluster_ids(vectors, 6, seed)
        assert np.array_equal(clusters, cluster_ids(vectors, 6, seed))  # same seed, same clusters
        # the partition is the planted one: each group is one cluster and no two groups share one
        assert {g: set(clusters[group == g]) for g in range(6)} == {g: {clusters[group == g][0]} for g in range(6)}
        assert len(set(clusters)) == 6
    assert np.array_equal(cluster_ids(vectors, 1, 0), np.zeros(len(vectors)))  # one cluster: the exact search


@pytest.mark.parametrize("block", [1, 7, 300])
@pytest.mark.parametrize("count", [4, 12])
def test_clustered_search_equals_the_naive_reference(block, count):
    # 6 groups of 30 at ~0.95 cosine, threshold 0.95: some members kept, some removed. 4 clusters hold several
    # groups each; 12 split groups, so pairs across a boundary are never compared and more samples stay
    vectors, _ = planted(seed=2, noise=0.3)
    clusters = cluster_ids(vectors, count, seed=0)
    assert len(set(clusters)) == count
    keys = [f"k{i}" for i in range(len(vectors))]
    dedup = NearDuplicates(vectors, keys, 0.95, clusters)
    found = [fate for start in range(0, len(vectors), block)
             for fate in dedup.check_block(list(range(start, min(start + block, len(vectors)))))]
    kept, twins = naive_greedy(vectors, clusters, 0.95)
    assert [i for i, fate in enumerate(found) if fate is None] == kept
    for i, twin in twins.items():
        assert found[i].reason.startswith(f"near-duplicate of kept sample k{twin} ")
    exact_kept, exact_twins = naive_greedy(vectors, np.zeros(len(vectors)), 0.95)
    assert 60 < len(exact_twins) < 120  # the threshold cuts through the groups: both fates occur
    assert (kept == exact_kept) == (count == 4)  # split groups change the answer; whole groups do not


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return converted(tmp_path_factory.mktemp("clusters"))


def test_curate_with_clusters_keeps_what_the_reference_keeps(shards, tmp_path):
    vectors, _ = planted(seed=3, groups=3, members=3, dim=8, noise=0.2)
    vectors = vectors[:8]
    np.save(tmp_path / "e.npy", vectors)
    out = str(tmp_path / "out")
    manifest = curate(shards, out, embeddings=str(tmp_path / "e.npy"), dedup_threshold=0.9, dedup_clusters=2,
                      dedup_seed=4, progress=False)
    kept, twins = naive_greedy(vectors, cluster_ids(vectors, 2, 4), 0.9)
    assert twins  # some sample is removed, so the comparison says something
    assert [key for key, fate in fates(out).items() if fate == ("success", None)] == [KEYS[i] for i in kept]
    assert manifest["created_by"]["config"]["dedup_clusters"] == 2


def test_cluster_flags_are_checked_before_anything_is_written(shards, tmp_path):
    np.save(tmp_path / "e.npy", np.eye(8, dtype=np.float32))
    embeddings = {"embeddings": str(tmp_path / "e.npy"), "dedup_threshold": 0.9}
    cases = [({**embeddings, "dedup_clusters": 9}, "--dedup-clusters 9: more clusters than the 8 input"),
             ({**embeddings, "dedup_clusters": -1}, "--dedup-clusters -1: must be >= 0"),
             ({"dedup_clusters": 2}, "--dedup-clusters goes with --embeddings and --dedup-threshold")]
    for options, message in cases:
        with pytest.raises(CurateError, match=message):
            curate(shards, str(tmp_path / "out"), progress=False, **options)
    assert not (tmp_path / "out").exists()
