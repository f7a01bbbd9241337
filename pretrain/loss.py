"""Contrastive losses: InfoNCE (CLIP) and SigLIP, exact across ranks, with variable local batch sizes.

    loss_fn = build_loss(cfg.loss, rank, world_size)
    loss = loss_fn(image_features, text_features, logit_scale, logit_bias)

Inputs, per rank: L2-normalised `image_features`, `text_features` [b_r, d] (this rank's rows; b_r
may differ between ranks when the loader dropped bad samples) and `logit_scale`: the SCALE, not
its log -- open_clip's convention, its model's forward returns `logit_scale.exp()`. Its value is
capped here at loss.max_logit_scale, out of place (safe under ZeRO-3, where the parameter cannot be
clamped in place); past the cap only a gradient that lowers the scale passes (see _CapScale), so the
scale never freezes at the cap and never drifts past it. `logit_bias`: SigLIP's bias (open_clip
returns it as is), optional; InfoNCE adds it too (a constant shift: no effect). bf16/fp16 inputs
are computed in fp32 with autocast off (the gradients return in the inputs' dtype); fp32 and fp64
stay as they are.

Semantics (value and gradient) are open_clip's ClipLoss(gather_with_grad=True) / SigLipLoss:
  infonce, global (loss.local_loss=false): every rank computes the full-batch loss over the
      gathered N = sum(b_r) rows: (CE(S, labels) + CE(S^T, labels)) / 2, S = s * I @ T^T + b.
  infonce, local: rank r computes only its rows (images vs all texts, texts vs all images, labels
      offset by the rows of lower ranks); loss_r = world * (sum of its rows' CE) / (2N).
  siglip: rank r's images vs all texts, -sum(logsigmoid(+-S)) * world / N.
With equal b_r the per-rank values are exactly open_clip's. In every mode mean_r(loss_r) is the
full-batch loss and the gradient w.r.t. rank r's features is world * d(full loss)/d(its rows), so
the 1/world averaging of parameter gradients (DDP, DeepSpeed) gives the single-process gradient.

Several positives (`image_ids` [b_r], `text_ids` [t_r]: the sample id of each image and of the image
each caption belongs to; data.captions_per_sample K gives t_r = K * b_r): image i and caption j are a
positive pair when their ids are equal -- an image's own K captions, and the captions of the same image
drawn twice into one global batch. Each positive pair is one cross-entropy term whose denominator holds
the pair and the row's NEGATIVES only (the other positives are never pushed away):
    l(i, j) = -log(e^z_ij / (e^z_ij + sum_{k not positive of i} e^z_ik)) = softplus(LSE_neg(i) - z_ij),
averaged over the pairs, image->text and text->image, then halved; SigLIP labels every positive pair +1.
With one caption per image and no repeated ids this is exactly the usual loss (the fast path above runs).
The global (local_loss=false) naive InfoNCE and SigLIP take ids; config validation refuses
captions_per_sample > 1 with local or tiled InfoNCE.

Hard negatives (NegCLIP; data.hard_negatives H): `negative_features` [b_r, H, d], this rank's images' own
negative captions. Image i's image->text row gets H more columns, z_ih = s * <I_i, N_ih> + b, scored against
image i ONLY (never against other images: no row of another image holds them, and no text->image row exists
for them); the text->image term is unchanged:
    l_i2t(i) = -log(e^z_ii / (sum_j e^z_ij + sum_h e^z_ih)).
The H logits of a row are computed on the rank that holds the image (and its negatives), then gathered with
the features' gather (with grad), so only [b_r, H] numbers travel, not [b_r, H, d]. Global and local naive
InfoNCE and the several-positives path take them; tiled and SigLIP are refused (config validation).

Gradient accumulation that keeps all negatives: see `splice_micro_batch` and `per_micro_batch`.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipforge.pretrain import distributed
from clipforge.modeling.config import LossConfig
from clipforge.pretrain.tiled_loss import tiled_infonce_global, tiled_infonce_local_sum


class ContrastiveLoss(nn.Module):
    """InfoNCE or SigLIP over features gathered from all ranks (see the module docstring)."""

    def __init__(self, cfg: LossConfig, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.cfg, self.rank, self.world_size = cfg, rank, world_size

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"kind={c.kind}, impl={c.impl}, tile_size={c.tile_size}, local_loss={c.local_loss}, "
                f"gather_with_grad={c.gather_with_grad}, rank={self.rank}, world_size={self.world_size}")

    def _gather(self, x: Tensor, sizes: Sequence[int]) -> Tensor:
        if self.cfg.gather_with_grad:
            return distributed.all_gather_with_grad(x, sizes)
        return distributed.all_gather_no_grad(x, sizes)

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor,
                logit_bias: Optional[Tensor] = None, image_ids: Optional[Tensor] = None,
                text_ids: Optional[Tensor] = None, negative_features: Optional[Tensor] = None) -> Tensor:
        with_ids = image_ids is not None and text_ids is not None
        if image_features.shape[1:] != text_features.shape[1:] or (
                not with_ids and image_features.shape != text_features.shape):
            raise ValueError(f"loss: image_features {tuple(image_features.shape)} and text_features "
                             f"{tuple(text_features.shape)} must have the same shape [b, d] (or pass "
                             "image_ids/text_ids for several captions per image)")
        if negative_features is not None:
            self._check_negatives(image_features, negative_features)
        actual = distributed.world_size()
        if actual != self.world_size:
            raise RuntimeError(f"loss was built for world_size={self.world_size} but torch.distributed has "
                               f"{actual}: build it after init_process_group with the real rank/world size")
        sizes = distributed.gather_sizes(image_features.shape[0], image_features.device)
        if sum(sizes) == 0:
            raise ValueError("loss: the global batch is empty (every rank has 0 rows); skip this step")
        image, text, scale, bias, negatives = (_at_least_fp32(t) for t in (
            image_features, text_features, logit_scale, logit_bias, negative_features))
        scale = _cap(scale, self.cfg.max_logit_scale)
        positive = self._positives(image_ids, text_ids, sizes) if with_ids else None
        # bf16 logits at scale 100 would be off by ~0.4: the loss runs in fp32 even under autocast.
        with torch.autocast(image.device.type, enabled=False):
            negative = None  # [b_r, H]: each of this rank's images against its own hard negatives
            if negatives is not None:
                negative = scale * torch.einsum("bd,bhd->bh", image, negatives)
                negative = negative + bias if bias is not None else negative
            if positive is not None:
                return self._multi_positive(image, text, scale, bias, sizes, positive, negative)
            if self.cfg.kind == "siglip":
                return self._siglip(image, text, scale, bias, sizes)
            return self._infonce(image, text, scale, bias, sizes, negative)

    def _check_negatives(self, image: Tensor, negatives: Tensor) -> None:
        if negatives.dim() != 3 or negatives.shape[0] != image.shape[0] or negatives.shape[2:] != image.shape[1:]:
            raise ValueError(f"loss: negative_features {tuple(negatives.shape)} must be [b, H, d] for image_features "
                             f"{tuple(image.shape)}")
        if self.cfg.kind != "infonce" or self.cfg.impl != "naive":
            raise ValueError(f"loss: hard negatives need loss.kind=infonce loss.impl=naive (got {self.cfg.kind}, "
                             f"{self.cfg.impl})")

    def _positives(self, image_ids: Tensor, text_ids: Tensor, sizes: Sequence[int]) -> Optional[Tensor]:
        """bool [N, M] of the global batch (SigLIP: [b_r, M]), or None when every image has exactly its
        one caption (the plain loss is then the same function: it runs, bit for bit as before)."""
        text_sizes = distributed.gather_sizes(text_ids.shape[0], text_ids.device)
        all_image = distributed.all_gather_no_grad(image_ids, sizes)
        all_text = distributed.all_gather_no_grad(text_ids, text_sizes)
        if torch.equal(all_image, all_text) and all_image.unique().numel() == all_image.numel():
            return None
        if self.cfg.kind == "siglip":  # this rank's images against every caption
            return image_ids[:, None] == all_text[None, :]
        return all_image[:, None] == all_text[None, :]

    def _multi_positive(self, image: Tensor, text: Tensor, scale: Tensor, bias: Optional[Tensor],
                        sizes: Sequence[int], positive: Tensor, negative: Optional[Tensor] = None) -> Tensor:
        text_sizes = distributed.gather_sizes(text.shape[0], text.device)
        all_text = self._gather(text, text_sizes)
        if self.cfg.kind == "siglip":
            logits = scale * image @ all_text.T + (bias if bias is not None else 0)
            signs = positive.to(logits.dtype) * 2 - 1
            return -F.logsigmoid(signs * logits).sum() * self.world_size / sum(sizes)
        logits = scale * self._gather(image, sizes) @ all_text.T
        if bias is not None:
            logits = logits + bias
        image_rows, image_positive = logits, positive
        if negative is not None:  # hard negatives: H more columns of each image's row, never a positive
            image_rows = torch.cat([logits, self._gather(negative, sizes)], dim=1)
            image_positive = F.pad(positive, (0, negative.shape[1]), value=False)
        return (multi_positive_cross_entropy(image_rows, image_positive)
                + multi_positive_cross_entropy(logits.T, positive.T)) / 2

    def _infonce(self, image: Tensor, text: Tensor, scale: Tensor, bias: Optional[Tensor],
                 sizes: Sequence[int], negative: Optional[Tensor] = None) -> Tensor:
        total, tile = sum(sizes), self.cfg.tile_size
        all_image, all_text = self._gather(image, sizes), self._gather(text, sizes)
        if not self.cfg.local_loss or self.world_size == 1:
            if self.cfg.impl == "tiled":
                return tiled_infonce_global(all_image, all_text, scale, bias, tile)
            logits = scale * all_image @ all_text.T
            if bias is not None:
                logits = logits + bias
            labels = torch.arange(total, device=image.device)
            image_rows = logits if negative is None else torch.cat([logits, self._gather(negative, sizes)], dim=1)
            return (F.cross_entropy(image_rows, labels) + F.cross_entropy(logits.T, labels)) / 2
        offset = sum(sizes[: self.rank])
        if self.cfg.impl == "tiled":
            row_sum = tiled_infonce_local_sum(image, text, all_image, all_text, scale, bias, tile, offset)
        else:
            labels = torch.arange(image.shape[0], device=image.device) + offset
            logits_image = scale * image @ all_text.T
            logits_text = scale * text @ all_image.T
            if bias is not None:
                logits_image, logits_text = logits_image + bias, logits_text + bias
            if negative is not None:  # this rank's rows: their own negatives are here, nothing to gather
                logits_image = torch.cat([logits_image, negative], dim=1)
            # Sums, not means: a rank whose batch lost every sample contributes 0, not NaN.
            row_sum = (F.cross_entropy(logits_image, labels, reduction="sum")
                       + F.cross_entropy(logits_text, labels, reduction="sum"))
        return row_sum * self.world_size / (2 * total)

    def _siglip(self, image: Tensor, text: Tensor, scale: Tensor, bias: Optional[Tensor],
                sizes: Sequence[int]) -> Tensor:
        all_text = self._gather(text, sizes)
        logits = scale * image @ all_text.T
        if bias is not None:
            logits = logits + bias
        # +1 for the positive pair (row i, column offset+i), -1 elsewhere: [b_r, N].
        signs = -torch.ones_like(logits)
        rows = torch.arange(image.shape[0], device=image.device)
        signs[rows, rows + sum(sizes[: self.rank])] = 1
        return -F.logsigmoid(signs * logits).sum() * self.world_size / sum(sizes)


def multi_positive_cross_entropy(logits: Tensor, positive: Tensor) -> Tensor:
    """Mean over positive pairs (i, j) of softplus(LSE_{k not positive of i} z_ik - z_ij) (module docstring).
    Masked entries get the dtype's lowest value, not -inf: a row with no negatives then costs 0 with a
    zero gradient (-inf would give logsumexp a NaN gradient); exp of it underflows to exactly 0 otherwise."""
    negatives = logits.masked_fill(positive, torch.finfo(logits.dtype).min).logsumexp(dim=1, keepdim=True)
    return F.softplus(negatives - logits)[positive].mean()


def _at_least_fp32(t: Optional[Tensor]) -> Optional[Tensor]:
    """bf16/fp16 -> fp32 (differentiable: the gradient goes back in the input's dtype)."""
    if t is not None and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


class _CapScale(torch.autograd.Function):
    """min(scale, cap) in value. At or past the cap the gradient passes only when it would LOWER the
    scale: torch.clamp would cut it for good (a scale exactly at ln 100 in the parameter would freeze),
    a plain straight-through gradient would let the parameter drift ever higher while the loss wants
    sharper logits, and then take as long to come back down. open_clip gets the same effect by
    clamping the parameter in place after each step, which is unsafe under ZeRO-3."""

    @staticmethod
    def forward(ctx, scale: Tensor, cap: float) -> Tensor:
        ctx.save_for_backward(scale)
        ctx.cap = cap
        return scale.clamp(max=cap)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (scale,) = ctx.saved_tensors
        # grad > 0: gradient descent lowers the scale, back towards the cap.
        passes = (scale < ctx.cap) | (grad > 0)
        return torch.where(passes, grad, torch.zeros_like(grad)), None


def _cap(scale: Tensor, cap: float) -> Tensor:
    return _CapScale.apply(scale, cap)


def build_loss(loss_cfg: LossConfig, rank: int, world_size: int) -> ContrastiveLoss:
    """The configured loss for this rank (call after torch.distributed is initialised, if it is)."""
    return ContrastiveLoss(loss_cfg, rank, world_size)


# ---- gradient accumulation with feature caching (open_clip accum_freq, but exact) --------------
#
# A step of K micro-batches whose loss is that of the whole batch (all K*b negatives):
#
#   with torch.no_grad():                                   # pass 1: features only, no graph
#       cached = [model(mb) for mb in micro_batches]         # (image [b_j,d], text [b_j,d]) each
#   for j, mb in enumerate(micro_batches):                   # pass 2: one micro-batch with grad
#       image_j, text_j, scale, bias = model(mb)             # same RNG state as pass 1 (dropout!)
#       loss = loss_fn(splice_micro_batch([c[0] for c in cached], image_j, j),
#                      splice_micro_batch([c[1] for c in cached], text_j, j),
#                      per_micro_batch(scale, K), per_micro_batch(bias, K))
#       backward(loss)       # NO 1/K scaling (DeepSpeed: engine.backward(loss, scale_wrt_gas=False))
#
# Every pass-2 loss has the full-batch value (log it once). Micro-batch j's backward gives its
# parameters exactly their share of the full-batch gradient, so the K backward passes sum to the
# full-batch gradient of the towers. logit_scale/bias appear live in all K losses: per_micro_batch
# scales their gradient by 1/K (value unchanged) so it too sums to the full-batch gradient
# (open_clip's accum_freq counts it K times). Across ranks each rank passes its own K micro-batches.


def splice_micro_batch(cached: Sequence[Tensor], live: Tensor, index: int) -> Tensor:
    """All micro-batches' features in order [sum b_j, d], micro-batch `index` replaced by `live`."""
    if cached[index].shape != live.shape:
        raise ValueError(f"micro-batch {index}: live features {tuple(live.shape)} differ from the cached "
                         f"{tuple(cached[index].shape)} (the two passes must see the same samples)")
    parts = [c.detach() for c in cached]
    parts[index] = live
    return torch.cat(parts)


def per_micro_batch(param: Optional[Tensor], num_micro_batches: int) -> Optional[Tensor]:
    """Same value as `param`, gradient divided by K: K accumulated backward passes sum to one."""
    if param is None or num_micro_batches == 1:
        return param
    frozen = param.detach()
    return frozen + (param - frozen) / num_micro_batches
