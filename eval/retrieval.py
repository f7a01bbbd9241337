"""Zero-shot retrieval metrics with CLIP_benchmark's definitions, in fixed-shape tiles (no N x N matrix).

    m = retrieval_metrics(text_emb, text_to_image, image_emb, ks=(1, 5, 10))
    m["image_retrieval_recall@5"]   # text -> image: fraction of captions whose image is in their top 5
    m["text_retrieval_recall@5"]    # image -> text: fraction of images with >= 1 own caption in their top 5

Definitions (CLIP_benchmark clip_benchmark/metrics/zeroshot_retrieval.py): scores = text_emb @ image_emb.T
(embeddings are L2-normalised by the caller). image_retrieval_recall@k averages, over captions, "the
caption's image is among its k best-scoring images"; text_retrieval_recall@k averages, over images, "at
least one of the image's captions is among its k best-scoring captions". An image with no caption counts
as a miss (CLIP_benchmark's 0/0 recall is NaN, and NaN > 0 is false). k larger than the number of
candidates means every candidate is retrieved (CLIP_benchmark's torch.topk would raise).

Ties: candidates are ordered by score descending, then by index ascending (a stable sort). CLIP_benchmark
takes torch.topk indices, whose order among equal scores is unspecified (on CPU it is neither first nor
last); on scores without ties both give the same numbers.

How: instead of top-k lists we count, for every query, the candidates that rank before its positive:
    rank(text t) = #{images j: s[t,j] > s[t,p(t)]} + #{j < p(t): s[t,j] == s[t,p(t)]}
and for an image i, with b(i) its best caption (highest score, then lowest index)
    rank(image i) = #{texts u: s[u,i] > s[b(i),i]} + #{u < b(i): s[u,i] == s[b(i),i]},
a hit at k iff rank < k. One pass over [tile_texts x tile_images] score tiles serves both directions.
Counts stop mattering at max(ks): a tile whose texts and images have all reached it is skipped, which is
exact (a rank >= max(ks) is a miss at every k) and makes bad or random models cheap to score.

Exactness: every score is computed by a matmul of the same fixed shape (tiles are zero-padded), so its
float32 value does not depend on the chunking, the number of ranks or the batch order; tests check the
counts equal a direct full-matrix computation.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch

DEFAULT_TILE = (1024, 4096)  # texts x images per matmul: 16 MiB of float32 scores


class Comm:
    """Collectives used when several ranks share the queries. World size 1: identity."""

    def all_gather_cat(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x


def f32_ratio(count: int, total: int) -> float:
    """count/total rounded to float32, as CLIP_benchmark's `hits.float().mean().item()` reports it
    (exact sum below 2**24 queries), so the JSON numbers are identical to the last digit."""
    if total == 0:
        return 0.0
    return float(torch.tensor(count, dtype=torch.float32) / torch.tensor(total, dtype=torch.float32))


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    if len(x) == rows:
        return x
    return torch.cat([x, x.new_zeros(rows - len(x), x.shape[1])])


def _tile_scores(texts: torch.Tensor, images: torch.Tensor, tile: Tuple[int, int]) -> torch.Tensor:
    """[len(texts), len(images)] scores from one [tile[0] x tile[1]] matmul (fixed shape = fixed rounding)."""
    scores = _padded(texts, tile[0]) @ _padded(images, tile[1]).T
    return scores[:len(texts), :len(images)]


def positive_scores(text_emb: torch.Tensor, text_to_image: torch.Tensor, image_emb: torch.Tensor,
                    tile: Tuple[int, int] = DEFAULT_TILE) -> torch.Tensor:
    """s[t, p(t)] for every text: the diagonal of same-shape tiles against the gathered positive images
    (one tile per tile_texts texts, 1/(number of image tiles) of the counting pass's work)."""
    m = min(tile)
    out = torch.empty(len(text_emb), dtype=torch.float32, device=text_emb.device)
    for a in range(0, len(text_emb), m):
        texts = text_emb[a:a + m]
        out[a:a + len(texts)] = _tile_scores(texts, image_emb[text_to_image[a:a + m]], tile).diagonal()
    return out


def best_captions(pos_t: torch.Tensor, text_to_image: torch.Tensor, num_images: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per image: the score of its best caption and that caption's index (lowest among equal scores).
    Images without captions get (-inf, -1)."""
    dev = pos_t.device
    pos_i = torch.full((num_images,), float("-inf"), device=dev).scatter_reduce(
        0, text_to_image, pos_t, reduce="amax", include_self=True)
    is_best = pos_t == pos_i[text_to_image]
    idx = torch.arange(len(pos_t), device=dev)
    big = torch.full((num_images,), len(pos_t), device=dev)
    best_t = big.scatter_reduce(0, text_to_image[is_best], idx[is_best], reduce="amin", include_self=True)
    best_t[best_t == len(pos_t)] = -1
    return pos_i, best_t


def count_ranks(text_emb: torch.Tensor, text_to_image: torch.Tensor, pos_t: torch.Tensor, text_offset: int,
                image_emb: torch.Tensor, pos_i: torch.Tensor, best_t: torch.Tensor, max_k: int,
                tile: Tuple[int, int] = DEFAULT_TILE) -> Tuple[torch.Tensor, torch.Tensor]:
    """Counts of candidates ranked before the positive, exact below max_k (>= max_k means a miss).

    text_emb [n, d] are this rank's texts, global indices text_offset..text_offset+n; image_emb [m, d]
    are all images. Returns (text counts [n], image counts [m] over this rank's texts only)."""
    dev = text_emb.device
    tq, tc = tile
    count_t = torch.zeros(len(text_emb), dtype=torch.long, device=dev)
    count_i = torch.zeros(len(image_emb), dtype=torch.long, device=dev)
    count_i[best_t < 0] = max_k  # an image without captions is a miss; it needs no counting
    text_ids = torch.arange(text_offset, text_offset + len(text_emb), device=dev)
    image_ids = torch.arange(len(image_emb), device=dev)
    for a in range(0, len(text_emb), tq):
        rows = slice(a, a + tq)
        texts_alive = bool((count_t[rows] < max_k).any())
        for b in range(0, len(image_emb), tc):
            cols = slice(b, b + tc)
            if not texts_alive and not bool((count_i[cols] < max_k).any()):
                continue  # every query here is already a miss at every k
            s = _tile_scores(text_emb[rows], image_emb[cols], tile)
            p, pt = text_to_image[rows, None], pos_t[rows, None]
            j = image_ids[None, cols]
            before = (s > pt) | ((s == pt) & (j < p))
            count_t[rows] += (before & (j != p)).sum(1)
            bi, qi = best_t[None, cols], pos_i[None, cols]
            u = text_ids[rows, None]
            before = (s > qi) | ((s == qi) & (u < bi))
            count_i[cols] += (before & (u != bi)).sum(0)
            texts_alive = bool((count_t[rows] < max_k).any())
    return count_t, count_i


def chance_levels(num_images: int, captions_per_image: torch.Tensor, ks: Sequence[int]) -> Dict[str, float]:
    """Expected recall of a random ranking. text->image: min(k, N)/N. image->text with c own captions among
    T texts: 1 - C(T-c, k)/C(T, k) = 1 - prod_{j<k} (T-c-j)/(T-j), averaged over images."""
    total = int(captions_per_image.sum())
    c = captions_per_image.double()
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = min(k, num_images) / num_images if num_images else 0.0
        miss = torch.ones_like(c)
        for j in range(min(k, total)):
            miss = miss * ((total - c - j).clamp(min=0) / (total - j))
        out[f"text_retrieval_recall@{k}"] = float((1 - miss).mean()) if len(c) else 0.0
        out[f"mean_recall@{k}"] = (out[f"image_retrieval_recall@{k}"] + out[f"text_retrieval_recall@{k}"]) / 2
    out["mean_recall"] = sum(out[f"mean_recall@{k}"] for k in ks) / len(ks)
    return out


def retrieval_metrics(text_emb: torch.Tensor, text_to_image: torch.Tensor, image_emb: torch.Tensor,
                      ks: Sequence[int] = (1, 5, 10), tile: Tuple[int, int] = DEFAULT_TILE,
                      text_offset: int = 0, comm: Optional[Comm] = None, return_ranks: bool = False):
    """CLIP_benchmark retrieval metrics + mean recall. Under several ranks, pass this rank's texts (global
    indices from text_offset; text_to_image holds global image indices), all images and a Comm; every rank
    returns the same dict. return_ranks adds (this rank's text ranks, all image ranks), capped at max(ks)."""
    comm = comm or Comm()
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"recall k values must be >= 1 (got {ks})")
    if min(tile) < 64:
        raise ValueError(f"tile={tile}: use at least 64 x 64 (smaller matmuls round differently)")
    text_emb, image_emb = text_emb.float(), image_emb.float()
    text_to_image = text_to_image.to(text_emb.device, torch.long)
    if len(text_to_image) and (int(text_to_image.min()) < 0 or int(text_to_image.max()) >= len(image_emb)):
        raise ValueError(f"text_to_image holds image indices outside [0, {len(image_emb)})")
    max_k = ks[-1]
    pos_t = positive_scores(text_emb, text_to_image, image_emb, tile)
    all_pos, all_t2i = comm.all_gather_cat(pos_t), comm.all_gather_cat(text_to_image)
    pos_i, best_t = best_captions(all_pos, all_t2i, len(image_emb))
    count_t, count_i = count_ranks(text_emb, text_to_image, pos_t, text_offset, image_emb, pos_i, best_t,
                                   max_k, tile)
    count_i = comm.all_reduce_sum(count_i).clamp(max=max_k)
    count_i[best_t < 0] = max_k
    count_t = count_t.clamp(max=max_k)
    hits_t = comm.all_reduce_sum(torch.stack([(count_t < k).sum() for k in ks]))
    num_texts = len(all_pos)
    metrics = {}
    for n, k in enumerate(ks):
        metrics[f"image_retrieval_recall@{k}"] = f32_ratio(int(hits_t[n]), num_texts)
        metrics[f"text_retrieval_recall@{k}"] = f32_ratio(int((count_i < k).sum()), len(image_emb))
    for k in ks:
        metrics[f"mean_recall@{k}"] = (metrics[f"image_retrieval_recall@{k}"] + metrics[f"text_retrieval_recall@{k}"]) / 2
    metrics["mean_recall"] = sum(metrics[f"mean_recall@{k}"] for k in ks) / len(ks)
    if return_ranks:
        return metrics, (count_t, count_i)
    return metrics
