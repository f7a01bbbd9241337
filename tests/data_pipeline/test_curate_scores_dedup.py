"""clipforge curate's precomputed-file filters with known answers: a score column (--min-score, --top-fraction)
and embedding near-duplicates (--embeddings, --dedup-threshold), matched to the samples by key or by order."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipforge.data_pipeline.curate import CurateError, curate
from clipforge.data_pipeline.curate import api
from clipforge.data_pipeline.curate.dedup import NearDuplicates

from .curate_inputs import KEYS, converted, fates

KEPT = ("success", None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return converted(tmp_path_factory.mktemp("curate"))


def _scores(path, keys, values, column="clip_score"):
    pq.write_table(pa.table({"key": keys, column: values}), path)
    return str(path)


def kept(out):
    return [key for key, fate in fates(out).items() if fate == KEPT]


def test_top_fraction_is_a_pool_rank_with_ties_in_input_order(shards, tmp_path):
    # rows shuffled and one extra key (scores of a larger pool): both fine
    values = {0: 0.30, 1: 0.10, 2: 0.25, 3: 0.25, 4: 0.40, 5: 0.05, 6: 0.25, 7: 0.20}
    order = [6, 2, 7, 0, 5, 1, 4, 3]
    path = _scores(tmp_path / "s.parquet", [KEYS[i] for i in order] + ["elsewhere"], [values[i] for i in order] + [1.0])
    out = str(tmp_path / "out")
    manifest = curate(shards, out, scores=path, top_fraction=0.5, progress=False)
    # floor(0.5 x 8) = 4: 0.40, 0.30, then two of the three 0.25s: the earlier ones (2, 3), not 6
    assert kept(out) == [KEYS[i] for i in (0, 2, 3, 4)]
    assert manifest["removed_by"] == {"top_fraction": 4}
    reason = pq.read_table(os.path.join(out, "curation.parquet")).to_pylist()[6]["error_message"]
    assert reason == "clip_score 0.25 is not among the best 4 of 8 (--top-fraction 0.5; lowest kept: 0.25)"


def test_min_score_and_top_fraction_together(shards, tmp_path):
    path = _scores(tmp_path / "s.parquet", KEYS, [0.1 * i for i in range(8)], column="sim")
    out = str(tmp_path / "out")
    manifest = curate(shards, out, scores=path, score_column="sim", min_score=0.65, top_fraction=0.29,
                      progress=False)
    # floor(0.29 x 8) = 2 best: 6 and 7; --min-score, checked first, names the fate of 0..6 (below 0.65)
    assert kept(out) == [KEYS[7]]
    assert manifest["removed_by"] == {"min_score": 7}


def test_bad_score_files_are_refused_naming_the_file(shards, tmp_path):
    cases = [
        (_scores(tmp_path / "a.parquet", KEYS[:7], [0.5] * 7), "no row for 1 of the 8 input samples (e.g. key "
                                                              "000000007)"),
        (_scores(tmp_path / "b.parquet", KEYS, [0.5] * 7 + [float("nan")]), "not finite for 1 samples"),
        (_scores(tmp_path / "c.parquet", KEYS, [0.5] * 8, "score"), "no column 'clip_score' (it has key, score)"),
        (_scores(tmp_path / "d.parquet", KEYS + [KEYS[0]], [0.5] * 9), f"key {KEYS[0]} has two rows"),
    ]
    (tmp_path / "e.parquet").write_text("not a parquet")
    cases.append((str(tmp_path / "e.parquet"), "not a readable parquet"))
    for path, message in cases:
        with pytest.raises(CurateError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
            curate(shards, str(tmp_path / "out"), scores=path, min_score=0.1, progress=False)
        assert path in str(error.value)
    assert not os.path.exists(tmp_path / "out")  # refused before anything is written


def _vectors():
    """8 vectors, orthogonal but for: 1 = 3 x 0 (cosine 1); 3 at 15 degrees from 0 (cosine 0.966); 5 at 30 degrees
    from 0 (0.866) in the same plane, so 15 degrees from 3 (0.966)."""
    vectors = np.eye(8, dtype=np.float32)
    vectors[1] = 3 * vectors[0]
    for index, degrees in ((3, 15), (5, 30)):
        vectors[index] = np.cos(np.radians(degrees)) * vectors[0] + np.sin(np.radians(degrees)) * np.eye(8)[3]
    return vectors


@pytest.mark.parametrize("window", [512, 3])  # 3: samples 0..2, 3..5, 6..7 decided apart, same answer
def test_near_duplicates_keep_the_first_and_compare_with_kept_samples_only(shards, tmp_path, monkeypatch, window):
    monkeypatch.setattr(api, "WINDOW", window)
    vectors = _vectors()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[3] @ unit[0] > 0.95 and unit[5] @ unit[3] > 0.95 and unit[5] @ unit[0] < 0.95
    np.save(tmp_path / "e.npy", vectors)
    out = str(tmp_path / "out")
    manifest = curate(shards, out, embeddings=str(tmp_path / "e.npy"), dedup_threshold=0.95, progress=False)
    # 1 and 3 are near-duplicates of kept 0; 5 is near 3 only, and 3 was removed: 5 stays
    assert kept(out) == [KEYS[i] for i in (0, 2, 4, 5, 6, 7)]
    assert manifest["counts"] == {"duplicate": 2, "success": 6} and manifest["removed_by"] == {"dedup": 2}
    reasons = [row["error_message"] for row in pq.read_table(os.path.join(out, "curation.parquet")).to_pylist()]
    assert reasons[1] == f"near-duplicate of kept sample {KEYS[0]} (cosine 1.0000 >= --dedup-threshold 0.95)"


def test_exact_copies_reach_threshold_one_and_parquet_embeddings_match_by_key(shards, tmp_path):
    vectors = _vectors()
    order = [7, 3, 5, 1, 0, 2, 6, 4]
    pq.write_table(pa.table({"key": [KEYS[i] for i in order], "vec": [vectors[i].tolist() for i in order]}),
                   tmp_path / "e.parquet")
    out = str(tmp_path / "out")
    curate(shards, out, embeddings=str(tmp_path / "e.parquet"), embedding_column="vec", dedup_threshold=1.0,
           progress=False)
    assert kept(out) == [KEYS[i] for i in (0, 2, 3, 4, 5, 6, 7)]  # only the scaled copy (cosine 1) goes


def test_dedup_only_sees_samples_the_other_filters_kept(shards, tmp_path):
    np.save(tmp_path / "e.npy", _vectors())
    (tmp_path / "remove.txt").write_text(KEYS[0] + "\n")
    out = str(tmp_path / "out")
    curate(shards, out, remove_list=str(tmp_path / "remove.txt"), embeddings=str(tmp_path / "e.npy"),
           dedup_threshold=0.95, progress=False)
    # 0 is removed by the list, so its copy 1 is the first of the group and stays; 3 is near 1, 5 is not
    assert fates(out)[KEYS[0]] == ("filtered", "remove_list")
    assert fates(out)[KEYS[3]] == ("duplicate", "dedup")
    assert kept(out) == [KEYS[i] for i in (1, 2, 4, 5, 6, 7)]


def test_bad_embedding_files_are_refused(shards, tmp_path):
    np.save(tmp_path / "short.npy", np.ones((7, 4), np.float32))
    zero = np.ones((8, 4), np.float32)
    zero[2] = 0
    np.save(tmp_path / "zero.npy", zero)
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"key": KEYS, "embedding": [[1.0, 0.0]] * 7 + [[1.0]]}), ragged)
    cases = [("short.npy", r"shape \(7, 4\), expected \(8, dim\)"), ("zero.npy", f"1 rows are zero .*key {KEYS[2]}"),
             ("ragged.parquet", "one list of floats of the same length per key")]
    for name, message in cases:
        with pytest.raises(CurateError, match=message):
            curate(shards, str(tmp_path / "out"), embeddings=str(tmp_path / name), dedup_threshold=0.9,
                   progress=False)


@pytest.mark.parametrize("block", [1, 7, 300])
def test_planted_groups_keep_exactly_their_first_member_across_block_boundaries(block):
    """60 random directions in 32-d (pairwise cosine < 0.8), each repeated 1-6 times with noise (cosine > 0.97 to
    its own direction), shuffled: at threshold 0.9 exactly the first member of each group is kept."""
    rng = np.random.default_rng(5)
    directions = rng.normal(size=(60, 32))
    group = rng.permutation(np.repeat(np.arange(60), rng.integers(1, 7, 60)))
    vectors = directions[group] + 0.04 * rng.normal(size=(len(group), 32))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = [f"k{i}" for i in range(len(group))]
    dedup = NearDuplicates(unit.astype(np.float32), keys, 0.9)
    fates = [fate for start in range(0, len(group), block)
             for fate in dedup.check_block(list(range(start, min(start + block, len(group)))))]
    first = {g: int(np.flatnonzero(group == g)[0]) for g in range(60)}
    assert [i for i, fate in enumerate(fates) if fate is None] == sorted(first.values())
    for i, fate in enumerate(fates):
        assert fate is None or fate.reason.startswith(f"near-duplicate of kept sample k{first[group[i]]} ")
