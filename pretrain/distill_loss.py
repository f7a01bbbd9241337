"""Contrastive knowledge distillation (MobileCLIP, TinyCLIP): the student's similarity distributions over the
global batch are pulled towards a teacher's.

    loss_fn = DistillLoss(build_loss(cfg.loss, rank, world), cfg.loss, teacher_scale, rank, world)
    loss = loss_fn(image_features, text_features, logit_scale, logit_bias,
                   teacher_image_features=t_image, teacher_text_features=t_text)   # + the contrastive loss's keywords

loss = (1 - w) * contrastive + w * KD, w = loss.distill.weight (MobileCLIP's lambda). Over the global batch of N
images and M captions (every rank's rows in rank order; M = K * N with data.captions_per_sample K):
    S = s * I @ T^T        [N, M]   the student's logits: its own logit scale s, capped as in pretrain/loss.py
    Z = c * I_t @ T_t^T    [N, M]   the teacher's: c = 1 / loss.distill.temperature, or the teacher's own scale
    KD = (sum_i KL(softmax(Z_i,:) || softmax(S_i,:)) / N + sum_j KL(softmax(Z_:,j) || softmax(S_:,j)) / M) / 2
image->text rows and text->image columns, MobileCLIP's L_distill (open_clip's DistillClipLoss is its cross-entropy
form: the same gradient plus the teacher's entropy, so not 0 at a perfect match). The teacher's features carry no
gradient and are gathered without it; the student's are gathered like the contrastive loss's. Global
(loss.local_loss=false): every rank computes every row. Local: rank r its images' rows and its captions' columns,
x world, so that the ranks' mean is the global KD and each rank's gradient follows pretrain/loss.py's convention.

Gradient accumulation (pretrain/step.py): each micro-batch's loss sees the step's spliced student features and the
teacher's features of the whole step (computed once per step: the teacher is a fixed function of its inputs), so S
and Z are always over the same global batch and the micro-batches' backward passes sum to the full batch's
gradient, as for the contrastive loss (open_clip's KD does not combine with its accum_freq: open_clip #399).
"""
from typing import Optional

import torch
from torch import Tensor, nn

from clipforge.modeling.config import LossConfig
from clipforge.pretrain import distributed
from clipforge.pretrain.loss import ContrastiveLoss, _at_least_fp32, _cap


def kl_rows(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Sum over rows of KL(softmax(teacher row) || softmax(student row))."""
    log_p = teacher_logits.log_softmax(dim=1)
    return (log_p.exp() * (log_p - student_logits.log_softmax(dim=1))).sum()


class DistillLoss(nn.Module):
    """(1 - w) x the contrastive loss + w x KD (module docstring); teacher_scale: c, the teacher's logit scale."""

    def __init__(self, contrastive: ContrastiveLoss, cfg: LossConfig, teacher_scale: float, rank: int = 0,
                 world_size: int = 1):
        super().__init__()
        self.contrastive, self.cfg, self.teacher_scale = contrastive, cfg, teacher_scale
        self.weight, self.rank, self.world_size = cfg.distill.weight, rank, world_size

    def extra_repr(self) -> str:
        return f"weight={self.weight}, teacher_scale={self.teacher_scale:.4g}, local_loss={self.cfg.local_loss}"

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor,
                logit_bias: Optional[Tensor] = None, *, teacher_image_features: Tensor, teacher_text_features: Tensor,
                **contrastive_keywords) -> Tensor:
        base = self.contrastive(image_features, text_features, logit_scale, logit_bias, **contrastive_keywords)
        kd = self.kd(image_features, text_features, logit_scale, teacher_image_features, teacher_text_features)
        return (1 - self.weight) * base + self.weight * kd

    def _gather(self, x: Tensor, sizes) -> Tensor:
        if self.cfg.gather_with_grad:
            return distributed.all_gather_with_grad(x, sizes)
        return distributed.all_gather_no_grad(x, sizes)

    def kd(self, image: Tensor, text: Tensor, scale: Tensor, teacher_image: Tensor, teacher_text: Tensor) -> Tensor:
        """KD alone (module docstring): image [b_r, d], text [t_r, d]; teacher_image [b_r, D], teacher_text [t_r, D]."""
        if teacher_image.shape[0] != image.shape[0] or teacher_text.shape[0] != text.shape[0]:
            raise ValueError(f"distillation: teacher features {tuple(teacher_image.shape)}, "
                             f"{tuple(teacher_text.shape)} must have the rows of the student's {tuple(image.shape)}, {tuple(text.shape)}")
        image, text, scale, teacher_image, teacher_text = (_at_least_fp32(t) for t in (
            image, text, scale, teacher_image.to(image.device), teacher_text.to(image.device)))
        scale = _cap(scale, self.cfg.max_logit_scale)
        sizes = distributed.gather_sizes(image.shape[0], image.device)
        text_sizes = distributed.gather_sizes(text.shape[0], image.device)
        n, m = sum(sizes), sum(text_sizes)
        all_teacher_image = distributed.all_gather_no_grad(teacher_image, sizes)
        all_teacher_text = distributed.all_gather_no_grad(teacher_text, text_sizes)
        # bf16 logits at scale 100 would be off by ~0.4 (pretrain/loss.py): fp32 even under autocast.
        with torch.autocast(image.device.type, enabled=False):
            all_image, all_text = self._gather(image, sizes), self._gather(text, text_sizes)
            if not self.cfg.local_loss or self.world_size == 1:
                student = scale * all_image @ all_text.T
                teacher = self.teacher_scale * all_teacher_image @ all_teacher_text.T
                return (kl_rows(teacher, student) / n + kl_rows(teacher.T, student.T) / m) / 2
            image_rows = kl_rows(self.teacher_scale * teacher_image @ all_teacher_text.T, scale * image @ all_text.T)
            text_rows = kl_rows(self.teacher_scale * teacher_text @ all_teacher_image.T, scale * text @ all_image.T)
            return self.world_size * (image_rows / n + text_rows / m) / 2
