"""Rank counting over score tiles: how many candidates come before each query's positive.

    rank(text t)  = #{images j: s[t,j] > s[t,p(t)]} + #{j < p(t): s[t,j] == s[t,p(t)]}
    rank(image i) = #{texts u: s[u,i] > s[b(i),i]} + #{u < b(i): s[u,i] == s[b(i),i]}

with b(i) the image's best caption (highest score, then lowest index). Counts are exact below max_k;
a query whose count reaches max_k is a miss at every k and needs no more tiles.

Every score comes from a matmul of one fixed shape, tile = [texts x images], zero-padded: MKL's and
cuBLAS's large-matrix kernels reduce each element in an order that depends on the shape only, so a score
is the same float32 wherever its two rows sit (tests compare against the full-matrix product). That is
what lets rows be gathered freely: the positives (a diagonal), the ranks' shares, the stragglers below.

Work: a cell (text tile, image tile) in which many queries are still open is scored once and serves both
directions. Cells with only a few open queries are deferred; their open texts (per image tile) and open
images (per text tile) are then gathered into full tiles. A good model keeps most queries open and pays
the dense cost once; a random one closes nearly every query in its first cell.
"""
from collections import defaultdict
from typing import Tuple

import torch

DEFAULT_TILE = (1024, 4096)  # texts x images per matmul: 16 MiB of float32 scores
DENSE_FRACTION = 8  # a cell with >= 1/8 of its texts or images still open is scored whole


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    if len(x) == rows:
        return x
    return torch.cat([x, x.new_zeros(rows - len(x), x.shape[1])])


def tile_scores(texts: torch.Tensor, images: torch.Tensor, tile: Tuple[int, int]) -> torch.Tensor:
    """[len(texts), len(images)] scores from one [tile[0] x tile[1]] matmul (fixed shape = fixed rounding)."""
    scores = _padded(texts, tile[0]) @ _padded(images, tile[1]).T
    return scores[:len(texts), :len(images)]


def positive_scores(text_emb: torch.Tensor, text_to_image: torch.Tensor, image_emb: torch.Tensor,
                    tile: Tuple[int, int] = DEFAULT_TILE) -> torch.Tensor:
    """s[t, p(t)] for every text: diagonals of tiles against the gathered positive images."""
    m = min(tile)
    out = torch.empty(len(text_emb), dtype=torch.float32, device=text_emb.device)
    for a in range(0, len(text_emb), m):
        texts = text_emb[a:a + m]
        out[a:a + len(texts)] = tile_scores(texts, image_emb[text_to_image[a:a + m]], tile).diagonal()
    return out


def best_captions(pos_t: torch.Tensor, text_to_image: torch.Tensor,
                  num_images: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per image: its best caption's score and index (lowest among equal scores); (-inf, -1) if none."""
    dev = pos_t.device
    pos_i = torch.full((num_images,), float("-inf"), device=dev).scatter_reduce(
        0, text_to_image, pos_t, reduce="amax", include_self=True)
    is_best = pos_t == pos_i[text_to_image]
    idx = torch.arange(len(pos_t), device=dev)
    none = torch.full((num_images,), len(pos_t), device=dev)
    best_t = none.scatter_reduce(0, text_to_image[is_best], idx[is_best], reduce="amin", include_self=True)
    best_t[best_t == len(pos_t)] = -1
    return pos_i, best_t


class RankCounter:
    """Holds one rank's texts (global ids text_offset..), all images, and the running counts."""

    def __init__(self, text_emb, text_to_image, pos_t, text_offset, image_emb, pos_i, best_t, max_k, tile):
        self.t_emb, self.t2i, self.pos_t = text_emb, text_to_image, pos_t
        self.i_emb, self.pos_i, self.best_t = image_emb, pos_i, best_t
        self.offset, self.max_k, self.tile = text_offset, max_k, tile
        dev = text_emb.device
        self.count_t = torch.zeros(len(text_emb), dtype=torch.long, device=dev)
        self.count_i = torch.zeros(len(image_emb), dtype=torch.long, device=dev)
        self.count_i[best_t < 0] = max_k  # an image without captions is a miss; nothing to count

    def texts(self, t: torch.Tensor, s: torch.Tensor, j: torch.Tensor) -> None:
        """Add to texts t (local ids) the images j (consecutive global ids) that come before their positive;
        s = scores[t, j]. Exact ties are rare, so the index rule runs only on rows that have one."""
        q, p = self.pos_t[t, None], self.t2i[t]
        n = (s > q).sum(1)
        eq = s == q
        rows = eq.any(1).nonzero().squeeze(1)
        if len(rows):  # equal score: the lower image index comes first (the positive itself is not < p)
            n[rows] += (eq[rows] & (j[None] < p[rows, None])).sum(1)
        col = p - j[0]
        own = ((col >= 0) & (col < len(j))).nonzero().squeeze(1)
        if len(own):  # never count the positive against itself, whatever the rounding
            n[own] -= (s[own, col[own]] > q[own, 0]).long()
        self.count_t[t] += n

    def images(self, t: torch.Tensor, s: torch.Tensor, i: torch.Tensor) -> None:
        """Add to images i the texts t (consecutive local ids) that come before their best caption;
        s = scores[t, i]."""
        q, b = self.pos_i[None, i], self.best_t[i]
        n = (s > q).sum(0)
        eq = s == q
        cols = eq.any(0).nonzero().squeeze(1)
        if len(cols):  # equal score: the lower text index comes first
            u = (t + self.offset)[:, None]
            n[cols] += (eq[:, cols] & (u < b[None, cols])).sum(0)
        row = b - (int(t[0]) + self.offset)
        own = ((row >= 0) & (row < len(t))).nonzero().squeeze(1)
        if len(own):
            n[own] -= (s[row[own], own] > q[0, own]).long()
        self.count_i[i] += n

    def open_texts(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.count_t[t] < self.max_k]

    def open_images(self, i: torch.Tensor) -> torch.Tensor:
        return i[self.count_i[i] < self.max_k]

    def run(self) -> Tuple[torch.Tensor, torch.Tensor]:
        tq, tc = self.tile
        dev = self.t_emb.device
        t_all = torch.arange(len(self.t_emb), device=dev)
        i_all = torch.arange(len(self.i_emb), device=dev)
        later_t, later_i = defaultdict(list), defaultdict(list)  # image tile -> text tiles, and back
        for a in range(0, len(t_all), tq):
            t = t_all[a:a + tq]
            for c in range(0, len(i_all), tc):
                i = i_all[c:c + tc]
                nt, ni = len(self.open_texts(t)), len(self.open_images(i))
                if nt * DENSE_FRACTION >= len(t) or ni * DENSE_FRACTION >= len(i):
                    s = tile_scores(self.t_emb[t], self.i_emb[i], self.tile)
                    self.texts(t, s, i)
                    self.images(t, s, i)
                else:
                    if nt:
                        later_t[c].append(a)
                    if ni:
                        later_i[a].append(c)
        for c, starts in later_t.items():  # open texts of deferred cells, gathered per image tile
            i = i_all[c:c + tc]
            t = self.open_texts(torch.cat([t_all[a:a + tq] for a in starts]))
            for k in range(0, len(t), tq):
                self.texts(t[k:k + tq], tile_scores(self.t_emb[t[k:k + tq]], self.i_emb[i], self.tile), i)
        for a, starts in later_i.items():  # open images of deferred cells, gathered per text tile
            t = t_all[a:a + tq]
            i = self.open_images(torch.cat([i_all[c:c + tc] for c in starts]))
            for k in range(0, len(i), tc):
                self.images(t, tile_scores(self.t_emb[t], self.i_emb[i[k:k + tc]], self.tile), i[k:k + tc])
        return self.count_t, self.count_i
