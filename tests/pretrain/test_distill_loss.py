"""The contrastive-KD loss (pretrain/distill_loss.py) against a naive per-row reference in fp64 (Python floats,
one softmax at a time), on hand-made batches: one caption per image, and two captions per image (M = 2N columns,
the several-positives contrastive loss underneath); the total is (1 - w) InfoNCE + w KD."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.modeling.config import LossConfig
from clipforge.pretrain.distill_loss import DistillLoss
from clipforge.pretrain.loss import build_loss


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=-1)


def _kl(p_logits, q_logits) -> float:
    """KL(softmax(p) || softmax(q)) of two lists of logits, term by term."""
    zp, zq = sum(math.exp(x) for x in p_logits), sum(math.exp(x) for x in q_logits)
    return sum(math.exp(a) / zp * ((a - math.log(zp)) - (b - math.log(zq))) for a, b in zip(p_logits, q_logits))


def reference_kd(image, text, scale, t_image, t_text, t_scale) -> float:
    n, m = image.shape[0], text.shape[0]
    dot = lambda a, b: sum(x * y for x, y in zip(a.tolist(), b.tolist()))  # noqa: E731
    student = [[scale * dot(image[i], text[j]) for j in range(m)] for i in range(n)]
    teacher = [[t_scale * dot(t_image[i], t_text[j]) for j in range(m)] for i in range(n)]
    rows = sum(_kl(teacher[i], student[i]) for i in range(n)) / n
    columns = sum(_kl([teacher[i][j] for i in range(n)], [student[i][j] for i in range(n)]) for j in range(m)) / m
    return (rows + columns) / 2


def _loss(weight: float, teacher_scale: float) -> DistillLoss:
    cfg = LossConfig()
    cfg.distill.weight = weight
    return DistillLoss(build_loss(cfg, 0, 1), cfg, teacher_scale)


@pytest.mark.parametrize("captions", [1, 2])
def test_kd_equals_the_naive_reference(captions):
    n, d, big_d = 5, 8, 6  # the teacher's width is its own
    image, text = _unit(n, d, 0), _unit(n * captions, d, 1)
    t_image, t_text = _unit(n, big_d, 2), _unit(n * captions, big_d, 3)
    scale, t_scale = torch.tensor(14.0, dtype=torch.float64), 25.0
    loss_fn = _loss(0.3, t_scale)
    ids = {} if captions == 1 else {"image_ids": torch.arange(n), "text_ids": torch.arange(n).repeat_interleave(2)}
    kd = loss_fn.kd(image, text, scale, t_image, t_text)
    expected = reference_kd(image, text, 14.0, t_image, t_text, t_scale)
    assert kd.item() == pytest.approx(expected, rel=1e-12)
    assert expected > 0.05  # different towers: the distributions differ
    total = loss_fn(image, text, scale, None, teacher_image_features=t_image, teacher_text_features=t_text, **ids)
    contrastive = build_loss(LossConfig(), 0, 1)(image, text, scale, None, **ids)
    assert total.item() == pytest.approx(0.7 * contrastive.item() + 0.3 * expected, rel=1e-12)


def test_kd_is_zero_when_the_student_matches_the_teacher_and_caps_the_student_scale():
    image, text = _unit(4, 8, 4), _unit(4, 8, 5)
    loss_fn = _loss(1.0, 20.0)
    same = loss_fn.kd(image, text, torch.tensor(20.0, dtype=torch.float64), image, text)
    assert same.item() == pytest.approx(0, abs=1e-14)
    # the student's scale is capped at loss.max_logit_scale (100) like the contrastive loss's
    capped = loss_fn.kd(image, text, torch.tensor(500.0, dtype=torch.float64), image, text).item()
    assert capped == pytest.approx(reference_kd(image, text, 100.0, image, text, 20.0), rel=1e-12)


def test_kd_refuses_teacher_rows_that_do_not_match():
    image, text = _unit(4, 8, 6), _unit(4, 8, 7)
    with pytest.raises(ValueError, match="rows of the student"):
        _loss(0.5, 10.0).kd(image, text, torch.tensor(10.0), image[:3], text)
