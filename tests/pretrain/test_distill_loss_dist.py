"""The distillation loss on 2 real gloo ranks with unequal local batches equals the single-process full batch, global
and local (loss.local_loss), with one and two captions per image: mean over ranks of the per-rank losses = the
full-batch loss, rank r's feature gradient / world = the full-batch gradient of its rows, the logit scale's mean
gradient = the full-batch one (pretrain/loss.py's convention, which DeepSpeed's averaging turns into the exact
gradient). The single-process values (checked against a naive reference in test_distill_loss.py) are computed here,
in pytest's own process, and handed to the ranks."""
import pytest
import torch
import torch.distributed as dist

from clipforge.modeling.config import LossConfig
from clipforge.pretrain.distill_loss import DistillLoss
from clipforge.pretrain.loss import build_loss
from tests.pretrain.test_distill_loss import _unit
from tests.pretrain.test_gather_dist import spawn_gloo

CASES = [(False, 1), (True, 1), (False, 2)]  # (local_loss, captions per image); several captions need the global loss


def _loss_fn(local_loss: bool, rank: int, world: int) -> DistillLoss:
    cfg = LossConfig(local_loss=local_loss)
    cfg.distill.weight = 0.4
    return DistillLoss(build_loss(cfg, rank, world), cfg, teacher_scale=30.0, rank=rank, world_size=world)


def _batch(total: int, captions: int):
    image, text = _unit(total, 8, 0).requires_grad_(), _unit(total * captions, 8, 1).requires_grad_()
    scale = torch.tensor(12.0, dtype=torch.float64, requires_grad=True)
    ids = {} if captions == 1 else {"image_ids": torch.arange(total),
                                    "text_ids": torch.arange(total).repeat_interleave(captions)}
    return image, text, scale, _unit(total, 6, 2), _unit(total * captions, 6, 3), ids


def _single_process(total: int) -> list:
    """(loss, gradients of image, text, scale) of the full batch, per case."""
    out = []
    for local_loss, captions in CASES:
        image, text, scale, t_image, t_text, ids = _batch(total, captions)
        loss = _loss_fn(local_loss, 0, 1)(image, text, scale, None, teacher_image_features=t_image,
                                          teacher_text_features=t_text, **ids)
        out.append((loss.detach(), torch.autograd.grad(loss, [image, text, scale])))
    return out


def _mean_over_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / world


def _worker(rank: int, world: int, sizes: list, references: list) -> None:
    for sizes_, references_ in zip(sizes, references):
        _compare(rank, world, sizes_, references_)


def _compare(rank: int, world: int, sizes: list, references: list) -> None:
    start, stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
    for (local_loss, captions), (ref_loss, (ref_image, ref_text, ref_scale)) in zip(CASES, references):
        image, text, scale, t_image, t_text, ids = _batch(sum(sizes), captions)
        rows = slice(start * captions, stop * captions)
        my_image = image.detach()[start:stop].clone().requires_grad_()
        my_text = text.detach()[rows].clone().requires_grad_()
        my_ids = {} if not ids else {"image_ids": ids["image_ids"][start:stop], "text_ids": ids["text_ids"][rows]}
        loss = _loss_fn(local_loss, rank, world)(my_image, my_text, scale, None, **my_ids,
                                                 teacher_image_features=t_image[start:stop],
                                                 teacher_text_features=t_text[rows])
        g_image, g_text, g_scale = torch.autograd.grad(loss, [my_image, my_text, scale])
        case = f"local_loss={local_loss} captions={captions} rank {rank}"
        torch.testing.assert_close(_mean_over_ranks(loss, world), ref_loss, rtol=1e-12, atol=0, msg=case)
        torch.testing.assert_close(g_image / world, ref_image[start:stop], rtol=1e-10, atol=1e-14, msg=case)
        torch.testing.assert_close(g_text / world, ref_text[rows], rtol=1e-10, atol=1e-14, msg=case)
        torch.testing.assert_close(_mean_over_ranks(g_scale, world), ref_scale, rtol=1e-10, atol=0, msg=case)


@pytest.mark.multiprocess
def test_two_ranks_equal_the_single_process_full_batch():
    sizes = [[5, 9], [0, 9]]  # unequal local batches; a rank that lost every sample
    spawn_gloo(_worker, 2, sizes, [_single_process(sum(s)) for s in sizes])
