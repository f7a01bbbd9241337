"""Retrieval metrics: hand-made score matrices with known answers, a direct full-matrix computation of
CLIP_benchmark's formulas, and chunked (tiled) == unchunked to the last digit."""
import math

import numpy as np
import pytest
import torch

from clipforge.eval.retrieval import chance_levels, retrieval_metrics


def f32(count, total):
    """CLIP_benchmark reports recall as a float32 mean of 0/1 hits."""
    return float(np.float32(count) / np.float32(total))


def from_scores(scores):
    """Embeddings whose products are exactly `scores`: texts = score rows, images = one-hot."""
    scores = torch.tensor(scores, dtype=torch.float32)
    return scores, torch.eye(scores.shape[1])


def test_ties_break_towards_the_lower_index_and_k_beyond_candidates():
    texts, images = from_scores([[0.5, 0.5, 0.1],    # image 0 ties image 1: 0 is first -> rank 0
                                 [0.5, 0.5, 0.1],    # image 1 ties image 0: rank 1
                                 [0.2, 0.2, 0.2]])   # image 2 ties both: rank 2
    m = retrieval_metrics(texts, torch.tensor([0, 1, 2]), images, ks=(1, 2, 3, 5))
    assert [m[f"image_retrieval_recall@{k}"] for k in (1, 2, 3, 5)] == [f32(1, 3), f32(2, 3), 1.0, 1.0]
    # columns: image 0 -> t0 first; image 1 -> t0 (0.5, lower index) before its own t1; image 2 -> t2 first
    assert [m[f"text_retrieval_recall@{k}"] for k in (1, 2, 3, 5)] == [f32(2, 3), 1.0, 1.0, 1.0]
    assert m["mean_recall@1"] == (f32(1, 3) + f32(2, 3)) / 2


def test_several_captions_per_image_any_caption_counts():
    texts, images = from_scores([[0.1, 0.9], [0.8, 0.2],    # captions of image 0
                                 [0.3, 0.4], [0.7, 0.6]])   # captions of image 1
    m = retrieval_metrics(texts, torch.tensor([0, 0, 1, 1]), images, ks=(1, 2))
    assert m["image_retrieval_recall@1"] == 0.5    # t1 and t2 find their image first
    assert m["image_retrieval_recall@2"] == 1.0
    # image 0: its t1 (0.8) is the best text overall; image 1: its best t3 (0.6) is beaten by t0 (0.9)
    assert m["text_retrieval_recall@1"] == 0.5
    assert m["text_retrieval_recall@2"] == 1.0
    assert m["mean_recall"] == (0.5 + 1.0) / 2  # mean over k of (text->image + image->text) / 2


def test_image_without_captions_is_a_miss_even_when_k_covers_everything():
    texts, images = from_scores([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]])
    m = retrieval_metrics(texts, torch.tensor([0, 1]), images, ks=(1, 10))
    assert m["image_retrieval_recall@1"] == 1.0
    assert m["text_retrieval_recall@10"] == f32(2, 3)


def test_bad_arguments_are_refused_with_the_reason():
    texts, images = from_scores([[1.0, 0.0]])
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(texts, torch.tensor([2]), images)
    with pytest.raises(ValueError, match=">= 1"):
        retrieval_metrics(texts, torch.tensor([0]), images, ks=(0,))
    with pytest.raises(ValueError, match="64"):
        retrieval_metrics(texts, torch.tensor([0]), images, tile=(16, 64))


def reference_ranks(scores, text_to_image):
    """Direct definition on the full matrix: position of the positive in a stable descending sort."""
    order_t = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank_t = (order_t == text_to_image[:, None]).int().argmax(1)
    order_i = torch.sort(scores.T, dim=1, descending=True, stable=True).indices  # [images, texts]
    own = text_to_image[order_i] == torch.arange(scores.shape[1])[:, None]
    has = own.any(1)
    rank_i = torch.where(has, own.int().argmax(1), torch.full_like(has, 10 ** 9, dtype=torch.long))
    return rank_t, rank_i


def clip_benchmark_recall(scores, positive, k):
    """CLIP_benchmark's recall_at_k: topk indices, one-hot, count positives (ties unspecified)."""
    topk = torch.topk(scores, k, dim=1)[1]
    hits = (torch.nn.functional.one_hot(topk, scores.shape[1]) * positive[:, None, :]).sum((1, 2))
    return float((hits > 0).float().mean())


def random_set(num_images=150, captions=(1, 5), dim=32, seed=0, duplicates=True):
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(num_images, dim, generator=g), dim=-1)
    counts = torch.randint(captions[0], captions[1] + 1, (num_images,), generator=g)
    t2i = torch.repeat_interleave(torch.arange(num_images), counts)
    texts = torch.nn.functional.normalize(images[t2i] + 1.2 * torch.randn(len(t2i), dim, generator=g), dim=-1)
    if duplicates:  # exact ties: repeated images, repeated captions (of other images too)
        images[10] = images[3]
        images[40:45] = images[20:25].clone()
        texts[7] = texts[2]
        texts[t2i == 11] = texts[0].clone()
    return texts, t2i, images


@pytest.mark.parametrize("duplicates", [False, True])
def test_equals_direct_full_matrix_computation(duplicates):
    texts, t2i, images = random_set(duplicates=duplicates)
    scores = texts @ images.T
    ks = (1, 5, 10)
    m, (rank_t, rank_i) = retrieval_metrics(texts, t2i, images, ks=ks, return_ranks=True)
    ref_t, ref_i = reference_ranks(scores, t2i)
    assert torch.equal(rank_t, ref_t.clamp(max=10))
    assert torch.equal(rank_i, ref_i.clamp(max=10))
    for k in ks:
        assert m[f"image_retrieval_recall@{k}"] == f32(int((ref_t < k).sum()), len(ref_t))
        assert m[f"text_retrieval_recall@{k}"] == f32(int((ref_i < k).sum()), len(ref_i))
        if not duplicates:  # no ties: CLIP_benchmark's own topk formula gives the very same floats
            positive = torch.zeros_like(scores, dtype=torch.bool)
            positive[torch.arange(len(t2i)), t2i] = True
            assert m[f"image_retrieval_recall@{k}"] == clip_benchmark_recall(scores, positive, k)
            assert m[f"text_retrieval_recall@{k}"] == clip_benchmark_recall(scores.T, positive.T, k)
    assert 0 < m["image_retrieval_recall@1"] < m["image_retrieval_recall@10"] < 1


@pytest.mark.parametrize("tile", [(64, 64), (64, 192), (128, 64), (256, 1024)])
def test_chunked_equals_unchunked_to_the_last_digit(tile):
    texts, t2i, images = random_set(num_images=300, dim=64, seed=1)
    ks = (1, 3, 5, 10, 50)
    whole = retrieval_metrics(texts, t2i, images, ks=ks, tile=(2048, 2048), return_ranks=True)
    tiled = retrieval_metrics(texts, t2i, images, ks=ks, tile=tile, return_ranks=True)
    assert whole[0] == tiled[0]
    assert torch.equal(whole[1][0], tiled[1][0]) and torch.equal(whole[1][1], tiled[1][1])


def test_skipping_finished_tiles_keeps_ranks_exact():
    # Random embeddings: almost every query is a miss at k=10 after its first tile, so most tiles are
    # skipped; the ranks below 10 must still match the full matrix.
    texts, t2i, images = random_set(num_images=600, dim=16, seed=2, duplicates=False)
    texts = torch.nn.functional.normalize(torch.randn(texts.shape, generator=torch.Generator().manual_seed(3)), dim=-1)
    _, (rank_t, rank_i) = retrieval_metrics(texts, t2i, images, ks=(10,), tile=(64, 64), return_ranks=True)
    ref_t, ref_i = reference_ranks(texts @ images.T, t2i)
    assert torch.equal(rank_t, ref_t.clamp(max=10)) and torch.equal(rank_i, ref_i.clamp(max=10))


def test_chance_levels_are_the_exact_probabilities():
    # 3 images with 1, 2, 3 captions (6 texts); image->text at k=2: 1 - C(6-c, 2)/C(6, 2)
    chance = chance_levels(3, torch.tensor([1, 2, 3]), ks=(1, 2))
    assert chance["image_retrieval_recall@2"] == 2 / 3
    want = sum(1 - math.comb(6 - c, 2) / math.comb(6, 2) for c in (1, 2, 3)) / 3
    assert chance["text_retrieval_recall@2"] == pytest.approx(want, rel=1e-12)
    # Monte Carlo agrees with the formula (random rankings of 6 texts)
    g = torch.Generator().manual_seed(0)
    owner = torch.tensor([0, 1, 1, 2, 2, 2])
    hits = sum(int((owner[torch.randperm(6, generator=g)[:2]] == i).any()) for _ in range(4000) for i in range(3))
    assert abs(hits / 12000 - want) < 0.02
