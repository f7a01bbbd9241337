"""Tiled InfoNCE on 2 real gloo ranks (global B = 4,096, unequal local rows, odd tile) = naive InfoNCE.

The naive distributed loss is itself checked against the single-process full batch in test_loss_dist.
"""
import pytest
import torch
import torch.distributed as dist

from clipforge.modeling.config import LossConfig
from tests.pretrain.test_gather_dist import spawn_gloo
from tests.pretrain.test_tiled import features, loss_and_grads, rel_err


def _tiled_worker(rank: int, world: int) -> None:
    sizes = [2047, 2049]  # 4,096 rows in all; neither local size is a multiple of the tile (500)
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    image, text = features(sum(sizes), 32, seed=11)
    my_image = image.detach()[start:stop].clone().requires_grad_()
    my_text = text.detach()[start:stop].clone().requires_grad_()
    for local_loss in (False, True):
        scale = torch.tensor(1 / 0.07, requires_grad=True)
        bias = torch.tensor(-3.0, requires_grad=True)
        results = {}
        for impl in ("naive", "tiled"):
            cfg = LossConfig(impl=impl, tile_size=500, local_loss=local_loss)
            results[impl] = loss_and_grads(cfg, my_image, my_text, scale, bias, rank, world)
        (naive_loss, naive), (tiled_loss, tiled) = results["naive"], results["tiled"]
        case = f"local_loss={local_loss} rank {rank}"
        assert abs(tiled_loss.item() - naive_loss.item()) <= 1e-5 * abs(naive_loss.item()), case
        for name, got, ref in zip(["image", "text"], tiled[:2], naive[:2]):
            assert rel_err(got, ref) <= 1e-5, (case, name, rel_err(got, ref))
        # The logit-scale gradient that training sees is the mean over ranks.
        scale_grads = torch.stack([tiled[2], naive[2]])
        dist.all_reduce(scale_grads)
        assert rel_err(scale_grads[0], scale_grads[1]) <= 1e-5, (case, "logit_scale")


@pytest.mark.multiprocess
def test_tiled_equals_naive_on_two_ranks():
    spawn_gloo(_tiled_worker, 2)
