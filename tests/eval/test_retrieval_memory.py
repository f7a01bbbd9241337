"""The tiled retrieval eval (eval/retrieval.py + eval/ranking.py) never holds the N x M text-image score
matrix: the largest storage any op makes or returns (tests/memory_probes.py, forward ops under a
TorchDispatchMode) stays a few tiles and the embeddings, both when every query stays open (a good model: every
cell scored) and when nearly all close in their first cell (a random one: deferred cells gathered). The
same probe sees the full matrix in a direct `texts @ images.T` and in a retrieval_metrics whose one tile
covers everything, so a regression to either would fail here. The ranks are still the full-matrix ones."""
import pytest
import torch
import torch.nn.functional as F

from clipforge.eval.retrieval import retrieval_metrics
from tests.eval.test_retrieval import random_set, reference_ranks
from tests.memory_probes import LargestAllocation

NUM_IMAGES, DIM, TILE, KS = 512, 16, (64, 64), (1, 5, 10)


def _sets():
    texts, t2i, images = random_set(num_images=NUM_IMAGES, captions=(1, 3), dim=DIM, seed=4, duplicates=False)
    g = torch.Generator().manual_seed(5)
    good = F.normalize(images[t2i] + 0.3 * torch.randn(texts.shape, generator=g), dim=-1)
    random_texts = F.normalize(torch.randn(texts.shape, generator=g), dim=-1)
    return {"good": (good, t2i, images), "random": (random_texts, t2i, images)}


SETS = _sets()


def _full_bytes(texts, images) -> int:
    return len(texts) * len(images) * 4


def _largest(fn) -> LargestAllocation:
    probe = LargestAllocation()
    with probe:
        result = fn()
    probe.result = result
    return probe


@pytest.mark.parametrize("name", ["good", "random"])
def test_tiled_retrieval_never_holds_the_n_by_m_scores(name):
    texts, t2i, images = SETS[name]
    full = _full_bytes(texts, images)
    assert full >= 2_000_000   # ~1,000 captions x 512 images of float32 scores: ~2 MB
    probe = _largest(lambda: retrieval_metrics(texts, t2i, images, ks=KS, tile=TILE, return_ranks=True))
    # the biggest storages are the text embeddings (N x 16 floats) and 64 x 64 score tiles
    assert probe.nbytes <= max(texts.untyped_storage().nbytes(), 4 * TILE[0] * TILE[1]), (probe.nbytes, probe.op)
    assert probe.nbytes <= full / 16
    _, (rank_t, rank_i) = probe.result
    ref_t, ref_i = reference_ranks(texts @ images.T, t2i)
    assert torch.equal(rank_t, ref_t.clamp(max=max(KS))) and torch.equal(rank_i, ref_i.clamp(max=max(KS)))
    if name == "good":  # most queries stay open to the end: the dense path was exercised
        assert (rank_t < max(KS)).float().mean() > 0.5


def test_the_probe_sees_a_full_matrix_computation():
    texts, t2i, images = SETS["good"]
    full = _full_bytes(texts, images)
    assert _largest(lambda: texts @ images.T).nbytes >= full
    one_tile = _largest(lambda: retrieval_metrics(texts, t2i, images, ks=KS, tile=(2048, 2048)))
    assert one_tile.nbytes >= full
    assert one_tile.result == retrieval_metrics(texts, t2i, images, ks=KS, tile=TILE)
