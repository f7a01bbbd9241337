"""Gather contrastive features across ranks, keeping the gradient exact.

A contrastive loss needs every rank's features as negatives. `all_gather_with_grad(x)` returns
the rank-major concatenation of every rank's `x` (rank 0's rows first) and sends the gradient of
each rank's slice back to the rank that owns it, summed over ranks (reduce-scatter): exactly the
chain rule of "every rank computes its loss from the gathered tensor". torch's own
`torch.distributed.nn.functional.all_gather` does the same but is deprecated in torch 2.14 (its
FutureWarning fails the test suite), and it needs equal sizes on every rank. So are (torch 2.14.1,
FutureWarning) `all_gather_into_tensor` and `reduce_scatter_tensor`: we use their replacements
`all_gather_single` and `reduce_scatter_single`.

Local sizes may differ (the loader drops undecodable samples): the sizes and the padded rows move through
`modeling.distributed` (`gather_sizes`, `all_gather_padded`), the one variable-size all-gather eval uses too;
the backward is one `reduce_scatter_single`. When torch.distributed is not initialised (or world size is 1)
everything is the identity.

Start-up: `init_distributed(cfg.train.device) -> DistInfo` turns the torchrun environment into the process
group through DeepSpeed (`modeling.distributed.start_process_group`: NCCL on GPUs, gloo on CPU; alone, a
world of one).
"""
import os
import socket
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from clipforge.modeling.distributed import (DistInfo, all_gather_padded, gather_sizes, pad_rows, rank,
                                            start_process_group, world_size)
from clipforge.pretrain.quiet import quiet_cpu_startup

__all__ = ["DistInfo", "init_distributed", "gather_sizes", "all_gather_with_grad", "all_gather_no_grad",
           "average_batchnorm_statistics", "all_finite", "rank", "world_size"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "auto") -> DistInfo:
    """torchrun/srun env -> process group. Alone (no RANK) it becomes a world of one.
    cuda: NCCL, one GPU per local rank; cpu: gloo."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    with quiet_cpu_startup(on_cpu=not use_cuda):
        import deepspeed

    if "RANK" not in os.environ:  # plain `python -m clipforge.pretrain`: a world of one on this host
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))

    def join(backend: str) -> None:
        with quiet_cpu_startup(on_cpu=not use_cuda):  # the CPU backend builds its shared-memory op here
            deepspeed.init_distributed(dist_backend=backend)

    return start_process_group(use_cuda, join)


class _AllGatherVariable(torch.autograd.Function):
    """forward: the padded all-gather, pads dropped; backward: reduce-scatter (sum) of the grad."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: Sequence[int], group) -> Tensor:
        ctx.sizes, ctx.group = tuple(sizes), group
        ctx.rank = rank(group)
        return all_gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        sizes, most = ctx.sizes, max(ctx.sizes)
        # Every rank holds d(its loss)/d(all rows); rank r needs the sum over ranks of rows of r.
        padded = torch.cat([pad_rows(g, most) for g in grad.split(list(sizes))])
        mine = grad.new_empty((most,) + tuple(grad.shape[1:]))
        dist.reduce_scatter_single(mine, padded.contiguous(), op=dist.ReduceOp.SUM, group=ctx.group)
        return mine[: sizes[ctx.rank]], None, None


def all_gather_with_grad(x: Tensor, sizes: Optional[Sequence[int]] = None, group=None) -> Tensor:
    """Concatenate `x` [n_r, ...] of all ranks along dim 0 (rank order), differentiably.

    `sizes`: every rank's n_r if already known (saves one small collective); else gathered here.
    The gradient w.r.t. the local `x` is the sum over ranks of the gradient of its rows: with a
    loss computed on every rank from the gathered tensor and the usual 1/world averaging of
    parameter gradients (DDP, DeepSpeed), training gets exactly the single-process gradient.
    Identity when not distributed.
    """
    if world_size(group) == 1:
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], x.device, group)
    if sizes[rank(group)] != x.shape[0]:
        raise ValueError(f"all_gather_with_grad: sizes[{rank(group)}]={sizes[rank(group)]} but the local "
                         f"tensor has {x.shape[0]} rows")
    return _AllGatherVariable.apply(x, tuple(sizes), group)


def all_gather_no_grad(x: Tensor, sizes: Optional[Sequence[int]] = None, group=None) -> Tensor:
    """open_clip's `gather_with_grad=False`: other ranks' rows are constants, the local slice stays live.

    The gradient is then only this rank's own terms (1/world of the exact gradient for the global
    loss); kept for parity with open_clip's default, not recommended.
    """
    if world_size(group) == 1:
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], x.device, group)
    with torch.no_grad():
        gathered = _AllGatherVariable.apply(x.detach(), tuple(sizes), group)
    start = sum(sizes[: rank(group)])
    return torch.cat([gathered[:start], x, gathered[start + x.shape[0]:]])


def average_batchnorm_statistics(module: torch.nn.Module, group=None) -> None:
    """Every BatchNorm's running mean and variance set to their mean over ranks, after each step.

    Each rank updates its running statistics from its own micro-batches (the step's normalisation uses
    batch statistics and needs nothing shared), so without this the ranks' copies drift apart while the
    checkpoint and the export keep rank 0's: the periodic eval would embed each rank's share with other
    statistics, and a resumed rank 1 would continue from rank 0's copy. Averaged after every step the
    copies never differ, and the update equals one momentum update with the ranks' mean batch statistics
    (what timm's distribute_bn does at epoch ends). One all-reduce of the concatenated buffers in fp32
    (2 x 5,808 floats for the Flickr8k ResNet); a model without BatchNorm (ViTs) does nothing."""
    if world_size(group) == 1:
        return
    buffers = [b for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               and m.track_running_stats for b in (m.running_mean, m.running_var)]
    if not buffers:
        return
    flat = torch.cat([b.detach().float().reshape(-1) for b in buffers])
    dist.all_reduce(flat, group=group)
    flat /= world_size(group)
    for b, mean in zip(buffers, flat.split([b.numel() for b in buffers])):
        b.copy_(mean.view_as(b))


def all_finite(value: Tensor) -> bool:
    """Whether `value` is finite on every rank: one all-reduce (MAX) of a 0/1 flag, so every rank takes the
    same branch (a rank that skipped a step alone would deadlock the others' next collective)."""
    flag = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=value.device)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() == 0.0
