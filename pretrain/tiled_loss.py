"""Memory-tiled InfoNCE: the B x B logits are never materialised (Inf-CL style, exact gradients).

InfoNCE = mean over rows of cross-entropy CE_i = lse_i - S_i,label(i), in both directions
(image->text rows of S = s*I@T^T + b, and text->image rows = the columns of S). `_TiledCE`
computes the per-row (and per-column) CE tile by tile:

  forward   for each [tile x tile] block X of S: fold its row (and column) log-sum-exp into running
            per-row (per-column) values with logaddexp; the positives S_i,label(i) are row-wise dot
            products (O(B*d)). Saves only the features, s, b and the LSE vectors: O(B*d + B).
  backward  d CE_i / d X_ij = exp(X_ij - lse_i) - [j = label(i)]: recompute each block, form
            dX = g_row*exp(X - lse_row) + g_col*exp(X - lse_col) in place, subtract the g's on the
            label diagonal, and accumulate dA += dX @ B, dB += dX^T @ (s*A); ds = <dA_unscaled, A>,
            db = sum(dX). The positives go through the same dX, so each feature gradient is built
            once, in place (no second [B, d] gradient from a separate autograd path).

Cost: 1 block matmul forward + 3 backward (naive: 1 + 2, with B^2 floats kept between them); on
one CPU core it is nevertheless faster than naive at B=4,096 (blocks stay in cache; bench/loss.py).
Peak extra memory: about two tile^2 fp32 blocks plus the O(B*d) feature gradients.
bf16/fp16 inputs are computed in fp32, fp64 in fp64 (autocast off): the LSE must not be done in bf16.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def _block_lse(x: Tensor, dim: int) -> Tensor:
    """log-sum-exp of block x along dim, one temporary block."""
    peak = x.amax(dim, keepdim=True)
    return (x - peak).exp_().sum(dim).log_().add_(peak.squeeze(dim))


def _compute_dtype(a: Tensor) -> torch.dtype:
    """fp32 for bf16/fp16/fp32 inputs, fp64 for fp64 ones."""
    return torch.promote_types(a.dtype, torch.float32)


def _spans(total: int, tile: int):
    return [(start, min(start + tile, total)) for start in range(0, total, tile)]


def _label_diagonal(block: Tensor, r0: int, c0: int, offset: int) -> Tuple[Tensor, int]:
    """View of the block's entries (i, i + offset) (global row i), and the global row of its first."""
    k = offset + r0 - c0  # block column - block row on the label line
    first_row = r0 + max(0, -k)
    return block.diagonal(k), first_row


class _TiledCE(torch.autograd.Function):
    """ce_rows[i] = logsumexp_j(S_ij) - S_i,i+offset; if both (offset 0): ce_cols[j] = lse_i(S_ij) - S_jj.

    S = s * a @ b^T + bias, a [n, d], b [m, d], n + offset <= m.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, scale: Tensor, bias: Optional[Tensor], tile: int, both: bool,
                offset: int):
        n = a.shape[0]
        with torch.autocast(a.device.type, enabled=False):
            a32, b32, s = (t.to(_compute_dtype(a)) for t in (a, b, scale))
            lse_rows = a32.new_full((n,), -math.inf)
            lse_cols = a32.new_full((b.shape[0],), -math.inf) if both else None
            for r0, r1 in _spans(n, tile):
                a_s = a32[r0:r1] * s  # fold the scale into the row block [tile, d], not into X
                for c0, c1 in _spans(b.shape[0], tile):
                    x = a_s @ b32[c0:c1].T
                    if bias is not None:
                        x += bias.to(x.dtype)
                    lse_rows[r0:r1] = torch.logaddexp(lse_rows[r0:r1], _block_lse(x, 1))
                    if both:
                        lse_cols[c0:c1] = torch.logaddexp(lse_cols[c0:c1], _block_lse(x, 0))
            positives = torch.linalg.vecdot(a32, b32[offset:offset + n]) * s  # [n]
            if bias is not None:
                positives += bias.to(positives.dtype)
        ctx.tile, ctx.both, ctx.offset = tile, both, offset
        ctx.save_for_backward(a, b, scale, bias, lse_rows, lse_cols)
        if both:
            return lse_rows - positives, lse_cols - positives
        return lse_rows - positives

    @staticmethod
    def backward(ctx, grad_rows: Tensor, grad_cols: Optional[Tensor] = None):
        a, b, scale, bias, lse_rows, lse_cols = ctx.saved_tensors
        need_a, need_b, need_s, need_bias = ctx.needs_input_grad[:4]
        with torch.autocast(a.device.type, enabled=False):
            a32, b32, s = (t.to(_compute_dtype(a)) for t in (a, b, scale))
            g_rows = grad_rows.to(a32.dtype)
            g_cols = grad_cols.to(a32.dtype) if ctx.both else None
            # On the label line dX gets -g_row[i] (and -g_col[i]: with both, row i's label is column i).
            g_label = g_rows + g_cols if ctx.both else g_rows
            grad_a_unscaled = torch.zeros_like(a32)  # sum_j dX_ij b_j; times s = d/da, dot a = d/ds
            grad_b = torch.zeros_like(b32) if need_b else None
            grad_bias = a32.new_zeros(()) if bias is not None else None
            for r0, r1 in _spans(a.shape[0], ctx.tile):
                a_s = a32[r0:r1] * s
                for c0, c1 in _spans(b.shape[0], ctx.tile):
                    x = a_s @ b32[c0:c1].T
                    if bias is not None:
                        x += bias.to(x.dtype)
                    # dX = g_row * softmax over the row (+ g_col * softmax over the column), in place.
                    dx = torch.sub(x, lse_rows[r0:r1, None]).exp_().mul_(g_rows[r0:r1, None])
                    if ctx.both:
                        dx.add_(x.sub_(lse_cols[None, c0:c1]).exp_().mul_(g_cols[None, c0:c1]))
                    labels, first = _label_diagonal(dx, r0, c0, ctx.offset)
                    if labels.numel():
                        labels.sub_(g_label[first:first + labels.numel()])
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
        return grad_a, grad_b, grad_s, grad_bias, None, None, None


def tiled_ce(a: Tensor, b: Tensor, scale: Tensor, bias: Optional[Tensor], tile: int, both: bool,
             offset: int = 0) -> Tuple[Tensor, ...]:
    """Per-row (and, if both, per-column) cross-entropy of S = s * a @ b^T + bias whose row i's
    label is column offset + i; differentiable w.r.t. a, b, scale and bias."""
    if tile < 1:
        raise ValueError(f"loss.tile_size={tile}: must be >= 1")
    if offset < 0 or offset + a.shape[0] > b.shape[0] or (both and (offset or a.shape[0] != b.shape[0])):
        raise ValueError(f"tiled_ce: labels offset {offset} do not fit a {tuple(a.shape)} x {tuple(b.shape)} "
                         f"problem (both directions need a square problem and offset 0)")
    out = _TiledCE.apply(a, b, scale, bias, tile, both, offset)
    return out if both else (out,)


def tiled_infonce_global(all_image: Tensor, all_text: Tensor, scale: Tensor, bias: Optional[Tensor],
                         tile: int) -> Tensor:
    """Symmetric InfoNCE over the whole (gathered) batch [N, d]; same value as open_clip's global loss."""
    ce_image, ce_text = tiled_ce(all_image, all_text, scale, bias, tile, both=True)
    return (ce_image.sum() + ce_text.sum()) / (2 * all_image.shape[0])


def tiled_infonce_local_sum(image: Tensor, text: Tensor, all_image: Tensor, all_text: Tensor,
                            scale: Tensor, bias: Optional[Tensor], tile: int, offset: int) -> Tensor:
    """Sum over this rank's rows of both directions' cross-entropy, against all gathered columns;
    local row i's positive is gathered row offset + i (offset = rows of the lower ranks)."""
    (ce_image,) = tiled_ce(image, all_text, scale, bias, tile, both=False, offset=offset)
    (ce_text,) = tiled_ce(text, all_image, scale, bias, tile, both=False, offset=offset)
    return ce_image.sum() + ce_text.sum()
