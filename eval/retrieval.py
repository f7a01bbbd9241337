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

How (eval/ranking.py): for every query we count the candidates ranked before its positive in fixed-shape
[texts x images] score tiles; a hit at k iff that count < k. Counts stop mattering at max(ks), so cells
whose queries are all decided are skipped; the result is exact and identical for any chunking or number
of ranks (tests compare with a direct full-matrix computation). Peak memory: the embeddings plus a few
tiles (16 MiB each by default), never the N x N matrix.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch

from clipforge.eval.errors import EvalOptionError
from clipforge.eval.ranking import DEFAULT_TILE, RankCounter, best_captions, positive_scores


class Comm:
    """Collectives used when several ranks share the queries. World size 1: identity."""

    def all_gather_cat(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather_objects(self, obj) -> list:
        return [obj]


def f32_ratio(count: int, total: int) -> float:
    """count/total rounded to float32, as CLIP_benchmark's `hits.float().mean().item()` reports it
    (exact sum below 2**24 queries), so the JSON numbers are identical to the last digit."""
    if total == 0:
        return 0.0
    return float(torch.tensor(count, dtype=torch.float32) / torch.tensor(total, dtype=torch.float32))


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
        raise EvalOptionError(f"recall k values must be >= 1 (got {ks})")
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
    count_t, count_i = RankCounter(text_emb, text_to_image, pos_t, text_offset, image_emb, pos_i, best_t,
                                   max_k, tile).run()
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
