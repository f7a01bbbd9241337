"""Memory-tiled InfoNCE: the B x B logits are never materialised (Inf-CL style, exact gradients).

InfoNCE = mean over rows of (log-sum-exp of the row's logits - the positive logit), in both
directions (image->text rows of S = s*I@T^T + b, and text->image rows = columns of S). The
positive term is a cheap row-wise dot product left to autograd; only the log-sum-exp needs the
full matrix, and `_TiledLSE` computes it tile by tile:

  forward   for each [tile x tile] block X of S: fold its row (and column) log-sum-exp into running
            per-row (per-column) values with logaddexp. Saves only the features, s, b, and the
            per-row/per-column LSE vectors: O(B*d + B) memory.
  backward  d lse_i / d X_ij = softmax_ij = exp(X_ij - lse_i): recompute each block, form
            dX = g_row*exp(X - lse_row) + g_col*exp(X - lse_col) in place, and accumulate
            dA += dX @ B, dB += dX^T @ (s*A); ds = sum(dA_unscaled * A), db = sum(dX).

Cost: 1 block matmul forward + 3 backward (naive: 1 + 2, with B^2 floats kept between them); on
one CPU core it is nevertheless faster than naive at B=4,096 (blocks stay in cache; bench/loss.py).
Peak extra memory: about two tile^2 fp32 blocks plus the O(B*d) feature gradients.
Inputs of any float dtype are computed in fp32 (autocast off): the LSE must not be done in bf16.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def _block_lse(x: Tensor, dim: int) -> Tensor:
    """log-sum-exp of block x along dim, one temporary block."""
    peak = x.amax(dim, keepdim=True)
    return (x - peak).exp_().sum(dim).log_().add_(peak.squeeze(dim))


def _spans(total: int, tile: int):
    return [(start, min(start + tile, total)) for start in range(0, total, tile)]


class _TiledLSE(torch.autograd.Function):
    """lse_rows[i] = logsumexp_j(S_ij), lse_cols[j] = logsumexp_i(S_ij) for S = s * a @ b^T + bias."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, scale: Tensor, bias: Optional[Tensor], tile: int, both: bool):
        with torch.autocast(a.device.type, enabled=False):
            a32, b32, s = a.float(), b.float(), scale.float()
            lse_rows = a32.new_full((a.shape[0],), -math.inf)
            lse_cols = a32.new_full((b.shape[0],), -math.inf) if both else None
            for r0, r1 in _spans(a.shape[0], tile):
                a_s = a32[r0:r1] * s  # fold the scale into the row block [tile, d], not into X
                for c0, c1 in _spans(b.shape[0], tile):
                    x = a_s @ b32[c0:c1].T
                    if bias is not None:
                        x += bias.float()
                    lse_rows[r0:r1] = torch.logaddexp(lse_rows[r0:r1], _block_lse(x, 1))
                    if both:
                        lse_cols[c0:c1] = torch.logaddexp(lse_cols[c0:c1], _block_lse(x, 0))
        ctx.tile, ctx.both = tile, both
        ctx.save_for_backward(a, b, scale, bias, lse_rows, lse_cols)
        if both:
            return lse_rows, lse_cols
        return lse_rows

    @staticmethod
    def backward(ctx, grad_rows: Tensor, grad_cols: Optional[Tensor] = None):
        a, b, scale, bias, lse_rows, lse_cols = ctx.saved_tensors
        need_a, need_b, need_s, need_bias = ctx.needs_input_grad[:4]
        with torch.autocast(a.device.type, enabled=False):
            a32, b32, s = a.float(), b.float(), scale.float()
            g_rows = grad_rows.float()
            g_cols = grad_cols.float() if ctx.both else None
            grad_a_unscaled = torch.zeros_like(a32)  # sum_j dX_ij b_j; times s = d/da, dot a = d/ds
            grad_b = torch.zeros_like(b32) if need_b else None
            grad_bias = a32.new_zeros(()) if bias is not None else None
            for r0, r1 in _spans(a.shape[0], ctx.tile):
                a_s = a32[r0:r1] * s
                for c0, c1 in _spans(b.shape[0], ctx.tile):
                    x = a_s @ b32[c0:c1].T
                    if bias is not None:
                        x += bias.float()
                    # dX = g_row * softmax over the row (+ g_col * softmax over the column), in place.
                    dx = torch.sub(x, lse_rows[r0:r1, None]).exp_().mul_(g_rows[r0:r1, None])
                    if ctx.both:
                        dx.add_(x.sub_(lse_cols[None, c0:c1]).exp_().mul_(g_cols[None, c0:c1]))
                    grad_a_unscaled[r0:r1].addmm_(dx, b32[c0:c1])
                    if need_b:
                        grad_b[c0:c1].addmm_(dx.T, a_s)
                    if grad_bias is not None:
                        grad_bias += dx.sum()
        # d/ds first (a dot product, no [n, d] temporary), then d/da in place.
        grad_s = torch.dot(grad_a_unscaled.view(-1), a32.reshape(-1)).to(scale.dtype) if need_s else None
        grad_a = grad_a_unscaled.mul_(s).to(a.dtype) if need_a else None
        if grad_b is not None:
            grad_b = grad_b.to(b.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_a, grad_b, grad_s, grad_bias, None, None


def tiled_lse(a: Tensor, b: Tensor, scale: Tensor, bias: Optional[Tensor], tile: int,
              both: bool) -> Tuple[Tensor, ...]:
    """Per-row (and, if both, per-column) log-sum-exp of s * a @ b^T + bias; differentiable."""
    if tile < 1:
        raise ValueError(f"loss.tile_size={tile}: must be >= 1")
    out = _TiledLSE.apply(a, b, scale, bias, tile, both)
    return out if both else (out,)


def _positives(image: Tensor, text: Tensor, scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Sum over rows of the positive logits s * <image_i, text_i> + b (computed in fp32)."""
    pos = (image.float() * text.float()).sum() * scale.float()
    if bias is not None:
        pos = pos + bias.float() * image.shape[0]
    return pos


def tiled_infonce_global(all_image: Tensor, all_text: Tensor, scale: Tensor, bias: Optional[Tensor],
                         tile: int) -> Tensor:
    """Symmetric InfoNCE over the whole (gathered) batch [N, d]; same value as open_clip's global loss."""
    lse_rows, lse_cols = tiled_lse(all_image, all_text, scale, bias, tile, both=True)
    total = all_image.shape[0]
    return (lse_rows.sum() + lse_cols.sum() - 2 * _positives(all_image, all_text, scale, bias)) / (2 * total)


def tiled_infonce_local_sum(image: Tensor, text: Tensor, all_image: Tensor, all_text: Tensor,
                            scale: Tensor, bias: Optional[Tensor], tile: int) -> Tensor:
    """Sum over this rank's rows of both directions' cross-entropy, against all gathered columns.

    The positive of local row i is column offset+i of the gathered tensor, i.e. the local row itself.
    """
    (lse_image,) = tiled_lse(image, all_text, scale, bias, tile, both=False)
    (lse_text,) = tiled_lse(text, all_image, scale, bias, tile, both=False)
    return lse_image.sum() + lse_text.sum() - 2 * _positives(image, text, scale, bias)
