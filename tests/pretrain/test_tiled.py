"""Tiled InfoNCE = naive InfoNCE: value and gradients (features, logit scale, bias), fp32, rel err <= 1e-5."""
import pytest
import torch
import torch.nn.functional as F

from clipforge.modeling.config import LossConfig
from clipforge.pretrain.loss import build_loss
from clipforge.pretrain.tiled_loss import tiled_ce


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Norm-wise relative error ||got - ref|| / ||ref|| (computed in fp64)."""
    return ((got.double() - ref.double()).norm() / ref.double().norm()).item()


def loss_and_grads(cfg: LossConfig, image, text, scale, bias, rank=0, world=1):
    leaves = [image, text, scale, bias]
    loss = build_loss(cfg, rank, world)(image, text, scale, bias)
    return loss.detach(), torch.autograd.grad(loss, leaves)


def features(n: int, d: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(image + 0.7 * torch.randn(n, d, generator=g), dim=-1)
    return image.to(dtype).requires_grad_(), text.to(dtype).requires_grad_()


def assert_tiled_matches_naive(image, text, tile, scale_value=1 / 0.07, tol=1e-5):
    scale = torch.tensor(scale_value, requires_grad=True)
    bias = torch.tensor(-3.0, requires_grad=True)
    naive_loss, naive = loss_and_grads(LossConfig(impl="naive"), image, text, scale, bias)
    tiled_loss, tiled = loss_and_grads(LossConfig(impl="tiled", tile_size=tile), image, text, scale, bias)
    assert abs(tiled_loss.item() - naive_loss.item()) <= tol * abs(naive_loss.item())
    for name, got, ref in zip(["image", "text", "logit_scale"], tiled[:3], naive[:3]):
        assert rel_err(got, ref) <= tol, (name, rel_err(got, ref))
    # A constant shift of every logit leaves InfoNCE unchanged: both gradients are ~0.
    assert abs(tiled[3].item()) < 1e-5 and abs(naive[3].item()) < 1e-5


@pytest.mark.parametrize("n,tile", [(4096, 1024), (1000, 128), (37, 8), (37, 64), (5, 1)])
def test_tiled_equals_naive_single_process(n, tile):
    """Up to B=4,096; sizes that are not multiples of the tile, a tile larger than B, 1x1 tiles."""
    image, text = features(n, 32, seed=n)
    assert_tiled_matches_naive(image, text, tile)


def test_tiled_equals_naive_at_a_large_scale():
    """s = 100 (the clamp): the sharpest softmax training reaches; exercises the max-shifted LSE."""
    image, text = features(513, 16, seed=7)
    assert_tiled_matches_naive(image, text, tile=100, scale_value=100.0)


def test_tiled_ce_rows_and_columns_equal_torch_cross_entropy():
    a, b = (t.detach() for t in features(70, 8, seed=8))
    scale, bias = torch.tensor(20.0), torch.tensor(0.5)
    rows, cols = tiled_ce(a, b, scale, bias, tile=16, both=True)
    logits = scale * a @ b.T + bias
    labels = torch.arange(70)
    torch.testing.assert_close(rows, F.cross_entropy(logits, labels, reduction="none"), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(cols, F.cross_entropy(logits.T, labels, reduction="none"),
                               rtol=1e-6, atol=1e-5)
    # One direction, rows 0..29 labelled with columns 25..54 of a non-square [30, 70] problem.
    (part,) = tiled_ce(a[:30], b, scale, bias, tile=16, both=False, offset=25)
    expected = F.cross_entropy(logits[:30], labels[:30] + 25, reduction="none")
    torch.testing.assert_close(part, expected, rtol=1e-6, atol=1e-5)


def test_tiled_ce_gradient_with_offset_labels_equals_autograd():
    a, b = features(30, 8, seed=12)
    scale = torch.tensor(15.0, requires_grad=True)
    wide = torch.cat([b.detach(), b.detach()]).requires_grad_()  # [60, 8]: labels 13..42
    leaves = [a, wide, scale]
    (ce,) = tiled_ce(a, wide, scale, None, tile=7, both=False, offset=13)
    got = torch.autograd.grad((ce * torch.linspace(0.5, 2, 30)).sum(), leaves)
    logits = scale * a @ wide.T
    ref_ce = F.cross_entropy(logits, torch.arange(30) + 13, reduction="none")
    ref = torch.autograd.grad((ref_ce * torch.linspace(0.5, 2, 30)).sum(), leaves)
    for g, r in zip(got, ref):
        assert rel_err(g, r) <= 1e-5


def test_tiled_ce_refuses_labels_outside_the_columns():
    a, b = (t.detach() for t in features(10, 4, seed=13))
    with pytest.raises(ValueError, match="labels offset 5"):
        tiled_ce(a, b, torch.tensor(1.0), None, tile=4, both=False, offset=5)


def test_bf16_features_are_computed_in_fp32():
    image, text = features(300, 32, seed=9)
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    low = [t.detach().bfloat16().requires_grad_() for t in (image, text)]
    cfg = LossConfig(impl="tiled", tile_size=64)
    loss = build_loss(cfg, 0, 1)(*low, scale)
    grads = torch.autograd.grad(loss, low)
    assert loss.dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in grads)
    # Same as the fp32 loss of the (rounded) bf16 inputs.
    ref = build_loss(LossConfig(), 0, 1)(*(t.detach().float() for t in low), scale)
    assert abs(loss.item() - ref.item()) <= 1e-5 * ref.item()


def test_tile_size_below_one_is_refused():
    image, text = features(4, 4, seed=10)
    with pytest.raises(ValueError, match="loss.tile_size=0"):
        build_loss(LossConfig(impl="tiled", tile_size=0), 0, 1)(image, text, torch.tensor(10.0))
