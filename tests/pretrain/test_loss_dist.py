"""The losses on 2 real gloo ranks with unequal local batches equal the single-process full batch.

Convention checked (see pretrain/loss.py): mean over ranks of the per-rank losses = the full-batch
loss; rank r's feature gradient / world = the full-batch gradient of its rows; mean over ranks of
the logit-scale/bias gradients = the full-batch one (that is what DDP/DeepSpeed averaging computes).
"""
import pytest
import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss, SigLipLoss

from clipforge.modeling.config import LossConfig
from clipforge.pretrain.loss import build_loss
from tests.pretrain.test_gather_dist import spawn_gloo
from tests.pretrain.test_loss import _features

CASES = [
    ("infonce", "naive", False, True),   # kind, impl, local_loss, gather_with_grad
    ("infonce", "naive", True, True),
    ("infonce", "tiled", False, True),   # fp64 inputs: the tiled loss computes in fp64 too
    ("infonce", "tiled", True, True),
    ("siglip", "naive", False, True),
    ("infonce", "naive", False, False),  # open_clip's default: own-rank gradient only (1/world after averaging)
]


def _reference(kind, image, text, scale, bias):
    ref_fn = SigLipLoss() if kind == "siglip" else ClipLoss()
    loss = ref_fn(image, text, scale, bias)
    return loss.detach(), torch.autograd.grad(loss, [image, text, scale, bias])


def _mean_over_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / world


def _loss_worker(rank: int, world: int, sizes: list) -> None:
    total = sum(sizes)
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    for kind, impl, local_loss, with_grad in CASES:
        image, text = _features(total, 16, seed=5)
        scale = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
        bias = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)
        ref_loss, (ref_image, ref_text, ref_scale, ref_bias) = _reference(kind, image, text, scale, bias)

        my_image = image.detach()[start:stop].clone().requires_grad_()
        my_text = text.detach()[start:stop].clone().requires_grad_()
        cfg = LossConfig(kind=kind, impl=impl, tile_size=4, local_loss=local_loss, gather_with_grad=with_grad)
        loss = build_loss(cfg, rank, world)(my_image, my_text, scale, bias)
        g_image, g_text, g_scale, g_bias = torch.autograd.grad(loss, [my_image, my_text, scale, bias])
        case = f"{kind} {impl} local_loss={local_loss} gather_with_grad={with_grad} rank {rank}"
        torch.testing.assert_close(_mean_over_ranks(loss, world), ref_loss, rtol=1e-12, atol=0, msg=case)
        factor = world if with_grad else 1  # without gather-with-grad only the own-slot term is there
        torch.testing.assert_close(g_image / factor, ref_image[start:stop], rtol=1e-10, atol=1e-14, msg=case)
        torch.testing.assert_close(g_text / factor, ref_text[start:stop], rtol=1e-10, atol=1e-14, msg=case)
        if with_grad:
            torch.testing.assert_close(_mean_over_ranks(g_scale, world), ref_scale, rtol=1e-10, atol=0,
                                       msg=case)
            torch.testing.assert_close(_mean_over_ranks(g_bias, world), ref_bias, rtol=1e-10, atol=1e-14,
                                       msg=case)


@pytest.mark.multiprocess
@pytest.mark.parametrize("sizes", [[6, 6], [5, 9], [0, 9]], ids=["equal", "unequal", "rank0-empty"])
def test_two_ranks_equal_single_process_full_batch(sizes):
    spawn_gloo(_loss_worker, 2, sizes)
