"""The tiled InfoNCE (loss.impl=tiled, pretrain/tiled_loss.py) never materialises the B x B logits, forward or
backward, and keeps O(B*d) for backward; the naive loss, measured the same way, does both (so the probes
would catch a regression to it). B = 512, d = 16, tile 64: B x B fp32 = 1 MiB, a tile 16 KiB, the features
32 KiB each."""
import pytest
import torch
import torch.nn.functional as F

from clipforge.modeling.config import LossConfig
from clipforge.pretrain.loss import build_loss
from tests.memory_probes import LargestAllocation, saved_bytes

B, D, TILE = 512, 16, 64
FULL = B * B * 4  # bytes of the fp32 logits


def _inputs():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(B, D, generator=g), dim=-1).requires_grad_()
    text = F.normalize(image.detach() + 0.5 * torch.randn(B, D, generator=g), dim=-1).requires_grad_()
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    bias = torch.tensor(-1.0, requires_grad=True)
    return image, text, scale, bias


def _measure(impl: str) -> dict:
    loss_fn = build_loss(LossConfig(impl=impl, tile_size=TILE), 0, 1)
    image, text, scale, bias = _inputs()
    forward, backward = LargestAllocation(), LargestAllocation()
    with saved_bytes() as saved, forward:
        loss = loss_fn(image, text, scale, bias)
    with backward:
        loss.backward()
    return {"loss": loss.item(), "saved": saved["bytes"], "forward": forward.nbytes, "backward": backward.nbytes,
            "grads": (image.grad, text.grad, scale.grad)}


@pytest.fixture(scope="module")
def measured():
    return {impl: _measure(impl) for impl in ("naive", "tiled")}


def test_the_probes_see_the_naive_losss_logits_forward_and_backward(measured):
    naive = measured["naive"]
    assert naive["forward"] >= FULL and naive["backward"] >= FULL
    assert naive["saved"] >= FULL


def test_tiled_loss_never_holds_the_b_by_b_logits(measured):
    tiled = measured["tiled"]
    # the largest thing it makes is a tile block or a [B, d] feature gradient: far below B x B
    assert tiled["forward"] <= FULL / 16, tiled
    assert tiled["backward"] <= FULL / 16, tiled
    # for backward it keeps the features, scale, bias and the two LSE vectors: O(B*d + B)
    assert tiled["saved"] <= 2 * B * D * 4 + 2 * B * 4 + 64, tiled["saved"]


def test_tiled_loss_is_still_the_naive_loss(measured):
    naive, tiled = measured["naive"], measured["tiled"]
    assert tiled["loss"] == pytest.approx(naive["loss"], rel=1e-5)
    for got, ref in zip(tiled["grads"], naive["grads"]):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
