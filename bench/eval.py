"""Retrieval at scale on CPU: peak memory and time of eval.retrieval over 200k images x 1M captions of
random d=512 embeddings (5 captions per image), against the naive full score matrix (computed, not run:
it would need 200k x 1M x 4 B = 800 GB; CLIP_benchmark and open_clip's in-training eval build it).

    python -m bench.eval [--quick]      # quick: 10k images x 50k captions

The embeddings themselves take 2.46 GB (float32) and are counted in the peak. Random embeddings are the
easy case for tile skipping (every query is a miss after its first tile), so the notes also give the
measured time of one dense tile and what scoring every tile (a model with high recall) would take.
"""
import time

import torch

from bench.common import PeakRSS, cli, result
from clipforge.eval.ranking import DEFAULT_TILE, RankCounter, best_captions, positive_scores
from clipforge.eval.retrieval import retrieval_metrics

GB = 1e9


def random_unit_rows(n: int, dim: int, gen: torch.Generator, block: int = 65536) -> torch.Tensor:
    """[n, dim] L2-normalised rows, filled block by block (no second full-size copy at any time)."""
    out = torch.empty(n, dim)
    for a in range(0, n, block):
        rows = out[a:a + block]
        rows.normal_(generator=gen)
        rows /= rows.norm(dim=1, keepdim=True)
    return out


def dense_tile_seconds(dim: int, tile=DEFAULT_TILE, cells: int = 3) -> float:
    """Seconds per cell when no query can be skipped (captions close to their images, so all ranks stay
    below k): matmul + both directions' counting, measured on one text tile x `cells` image tiles."""
    gen = torch.Generator().manual_seed(1)
    images = random_unit_rows(cells * tile[1], dim, gen)
    t2i = torch.randint(0, len(images), (tile[0],), generator=gen)
    texts = torch.nn.functional.normalize(images[t2i] + 0.01 * torch.randn(tile[0], dim, generator=gen), dim=-1)
    pos_t = positive_scores(texts, t2i, images, tile)
    pos_i, best_t = best_captions(pos_t, t2i, len(images))
    t0 = time.perf_counter()
    RankCounter(texts, t2i, pos_t, 0, images, pos_i, best_t, 10, tile).run()
    return (time.perf_counter() - t0) / cells


def run(quick: bool) -> dict:
    num_images, per_image, dim = (10_000, 5, 512) if quick else (200_000, 5, 512)
    num_texts = num_images * per_image
    gen = torch.Generator().manual_seed(0)
    with PeakRSS() as mem:
        images = random_unit_rows(num_images, dim, gen)
        texts = random_unit_rows(num_texts, dim, gen)
        text_to_image = torch.arange(num_images).repeat_interleave(per_image)
        t0 = time.perf_counter()
        metrics = retrieval_metrics(texts, text_to_image, images, ks=(1, 5, 10))
        seconds = time.perf_counter() - t0
    emb_bytes = (num_images + num_texts) * dim * 4
    naive_bytes = num_images * num_texts * 4
    tiles = -(-num_texts // DEFAULT_TILE[0]) * -(-num_images // DEFAULT_TILE[1])
    dense = tiles * dense_tile_seconds(dim)
    notes = (f"{num_images:,} images x {num_texts:,} captions, d={dim}, tile {DEFAULT_TILE[0]}x{DEFAULT_TILE[1]}, "
             f"{torch.get_num_threads()} thread(s); retrieval {seconds:.1f} s; embeddings alone "
             f"{emb_bytes / GB:.2f} GB, peak RSS over them {(mem.peak - emb_bytes) / GB:.2f} GB; "
             f"naive = the full float32 score matrix, computed not run; R@10 t->i "
             f"{metrics['image_retrieval_recall@10']:.2e} (chance {10 / num_images:.1e}); scoring all "
             f"{tiles:,} tiles (no skipping: a model with high recall) would take ~{dense:.0f} s at the measured "
             f"{dense / tiles * 1000:.0f} ms per tile (one thread; a GPU or more threads divide it)")
    return result(name="eval: retrieval at scale (chunked top-k)", peer="naive full score matrix",
                  metric="peak memory, GB", clipforge=round(mem.peak / GB, 3),
                  peer_value=round(naive_bytes / GB, 1), notes=notes, higher_is_better=False)


if __name__ == "__main__":
    raise SystemExit(cli(run))
