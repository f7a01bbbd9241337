"""Tiled InfoNCE = naive InfoNCE: value and gradients (features, logit scale, bias), fp32, rel err <= 1e-5."""
import pytest
import torch
import torch.nn.functional as F

from pretrain.config import LossConfig
from pretrain.loss import build_loss
from pretrain.tiled_loss import tiled_lse


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


def test_tiled_lse_rows_and_columns_equal_torch_logsumexp():
    a, b = features(70, 8, seed=8)
    scale, bias = torch.tensor(20.0), torch.tensor(0.5)
    rows, cols = tiled_lse(a.detach(), b.detach()[:50], scale, bias, tile=16, both=True)
    logits = scale * a.detach() @ b.detach()[:50].T + bias  # [70, 50]: a non-square block grid
    torch.testing.assert_close(rows, torch.logsumexp(logits, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cols, torch.logsumexp(logits, 0), rtol=1e-6, atol=1e-6)


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
