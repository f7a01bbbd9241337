"""One optimizer step: forward/backward over `accum` micro-batches with feature caching, so the loss
(and its gradient) is exactly that of the full batch with all its negatives (open_clip's accum-freq
scheme): features of every micro-batch are computed once without grad; then each micro-batch is
recomputed with grad, its cached rows replaced, and the full-batch loss backpropagated. The sum of those
gradients is the full-batch gradient (logit_scale/bias get 1/accum of theirs per pass: see
pretrain/loss.py). RNG state is replayed per micro-batch so dropout /
patch dropout draw the same masks in the cached and the recomputed pass.
"""
from dataclasses import dataclass
from typing import Optional

import math

import torch

from clipforge.pretrain.distributed import all_finite, average_batchnorm_statistics
from clipforge.pretrain.loss import per_micro_batch, splice_micro_batch


@dataclass
class StepResult:
    loss: float
    grad_norm: Optional[float]
    applied: bool  # False: non-finite loss or gradient, weights untouched
    logit_scale: float  # the (clamped) scale used by this step's loss
    # fp16 only: the loss was finite and DeepSpeed's loss scaler skipped the step because the scaled
    # gradient overflowed (it halves the scale and goes on). Normal early in a run (the scale starts at
    # 2^16), so it is counted apart and never toward train.max_nonfinite_steps; a gradient that stays
    # non-finite drives the scale to its minimum, where DeepSpeed itself stops the run.
    overflow: bool = False


def _rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@dataclass
class TextInput:
    """The text side of a batch: tokens int64 [b*K, L], or a locked tower's stored outputs
    (`vectors`, float [b*K, d]); K captions per image, image-major; ids [b*K] the owner image of each
    row and image_ids [b] (None: one caption per image, all distinct -- the plain loss); negatives
    int64 [b, H, L]: each image's hard-negative captions (data.hard_negatives), None = off; teacher: the
    distillation teacher's features of the whole step ({"teacher_image_features": [b, D], "teacher_text_features":
    [b*K, D]}, pretrain/distill.py), passed to every micro-batch's loss as they are (they carry no gradient)."""
    rows: torch.Tensor
    vectors: bool = False
    image_ids: Optional[torch.Tensor] = None
    ids: Optional[torch.Tensor] = None
    negatives: Optional[torch.Tensor] = None
    teacher: Optional[dict] = None

    def forward(self, engine, images, rows, negatives=None):
        """-> (image [b, d], text [t, d], scale, bias, negative features [b, H, d] or None)."""
        if negatives is None:
            return (*(engine(images, text_vectors=rows) if self.vectors else engine(images, rows)), None)
        # One text forward: the negatives ride along as b*H more caption rows, split off after it.
        img, txt, scale, bias = engine(images, torch.cat([rows, negatives.flatten(0, 1)]))
        return img, txt[:rows.shape[0]], scale, bias, txt[rows.shape[0]:].view(*negatives.shape[:2], txt.shape[1])

    def split(self, image_chunks):
        """(row chunks, negatives chunks or Nones) aligned with the image micro-batches (K rows per image)."""
        per_image = self.rows.shape[0] // max(1, sum(c.shape[0] for c in image_chunks))
        rows = self.rows.split([c.shape[0] * per_image for c in image_chunks])
        if self.negatives is None:
            return rows, [None] * len(rows)
        return rows, self.negatives.split([c.shape[0] for c in image_chunks])


def _negatives(features: Optional[torch.Tensor]) -> dict:
    """The loss's hard-negative keyword, passed only when there are some (the plain call is unchanged)."""
    return {} if features is None else {"negative_features": features}


def _forward_backward(engine, loss_fn, images, text: TextInput, accum: int):
    """-> (full-batch loss (detached), whether backward ran, logit scale)."""
    ids = {} if text.ids is None else {"image_ids": text.image_ids, "text_ids": text.ids}
    ids.update(text.teacher or {})  # loss.distill: the teacher's features of the whole step
    if accum == 1:
        img, txt, scale, bias, neg = text.forward(engine, images, text.rows, text.negatives)
        loss = loss_fn(img, txt, scale, bias, **ids, **_negatives(neg))
        if not all_finite(loss.detach()):
            return loss.detach(), False, scale.item()
        engine.backward(loss, scale_wrt_gas=False)
        return loss.detach(), True, scale.item()
    image_chunks = images.tensor_split(accum)
    text_chunks, neg_chunks = text.split(image_chunks)
    states, img_cache, txt_cache, neg_cache = [], [], [], []
    with torch.no_grad():
        for image_chunk, text_chunk, neg_chunk in zip(image_chunks, text_chunks, neg_chunks):
            states.append(_rng_state(engine.device))
            img, txt, scale, bias, neg = text.forward(engine, image_chunk, text_chunk, neg_chunk)
            img_cache.append(img)
            txt_cache.append(txt)
            neg_cache.append(neg)
        after = _rng_state(engine.device)
        negatives = None if text.negatives is None else torch.cat(neg_cache)
        loss_value = loss_fn(torch.cat(img_cache), torch.cat(txt_cache), scale, bias, **ids, **_negatives(negatives))
    if not all_finite(loss_value):
        return loss_value, False, scale.item()
    for j in range(accum):
        _set_rng_state(engine.device, states[j])
        img, txt, scale, bias, neg = text.forward(engine, image_chunks[j], text_chunks[j], neg_chunks[j])
        negatives = None if neg is None else splice_micro_batch(neg_cache, neg, j)
        loss = loss_fn(splice_micro_batch(img_cache, img, j), splice_micro_batch(txt_cache, txt, j),
                       per_micro_batch(scale, accum), per_micro_batch(bias, accum), **ids, **_negatives(negatives))
        engine.backward(loss, scale_wrt_gas=False)
        if j < accum - 1:
            engine.step()  # not a boundary: DeepSpeed only advances its micro-step counter
    _set_rng_state(engine.device, after)
    return loss_value, True, scale.item()


def train_step(engine, loss_fn, images, text, accum: int, cfg) -> StepResult:
    """images: normalised [b,3,H,W] in the engine's dtype; text: a TextInput (or int64 tokens [b,L]),
    on the engine's device."""
    text = text if isinstance(text, TextInput) else TextInput(text)
    loss, ran, scale = _forward_backward(engine, loss_fn, images, text, accum)
    average_batchnorm_statistics(engine.module)  # the forward updated them, applied step or not
    scale = min(scale, cfg.loss.max_logit_scale)  # the value the loss used (it caps the parameter's exp)
    if not ran:
        return StepResult(loss=loss.item(), grad_norm=None, applied=False, logit_scale=scale)
    stepped = engine.nonfinite_guard.step()  # pretrain/engine.py step 5: this stage's clipping and check
    if stepped.overflow:
        return StepResult(loss=loss.item(), grad_norm=None, applied=False, logit_scale=scale, overflow=True)
    grad_norm = stepped.grad_norm
    applied = engine.was_step_applied() and grad_norm is not None and math.isfinite(grad_norm)
    return StepResult(loss=loss.item(), grad_norm=grad_norm, applied=bool(applied), logit_scale=scale)
