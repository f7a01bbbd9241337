"""The one home of process-group start-up and the variable-size all-gather, for pretrain and eval alike.

Start-up: `start_process_group(use_cuda, init)` sets the rank's GPU (NCCL on GPUs, gloo on CPU) and joins the
group through `init(backend)`: training joins through DeepSpeed (its communication layer must know the group),
eval through torch. `env_from_srun()` maps a plain srun's SLURM_* variables to torch's env:// ones.

Gather: `gather_sizes` (every rank's row count) and `all_gather_padded` (each rank pads to the largest, one
`all_gather_single` moves the data, the pads are dropped). `all_gather_single` is the replacement of the
deprecated `all_gather_into_tensor` (torch 2.14.1, FutureWarning) and works on gloo (CPU) and NCCL (GPU).
Training's differentiable gather (pretrain/distributed.py) and eval's `TorchComm.all_gather_cat` both call it.
When torch.distributed is not initialised (or world size is 1) everything is the identity.
"""
import os
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def world_size(group=None) -> int:
    """World size of the (default) process group; 1 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def rank(group=None) -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group)
    return 0


def rank_world() -> Tuple[int, int]:
    return rank(), world_size()


def env_from_srun() -> None:
    """Under a plain srun (one task per rank, no torchrun) take RANK/WORLD_SIZE/LOCAL_RANK from slurm's
    variables; MASTER_ADDR/PORT must be exported by the job. Variables already set win."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and "SLURM_PROCID" in os.environ:
        os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
        os.environ.setdefault("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))


def start_process_group(use_cuda: bool, init: Callable[[str], None]) -> DistInfo:
    """Join the process group of the env:// variables: on GPUs one device per local rank and NCCL, else gloo.
    The device is set before `init`, so NCCL's communicator is built on this rank's GPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    init("nccl" if use_cuda else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)


def gather_sizes(n: int, device: torch.device, group=None) -> List[int]:
    """Every rank's local row count, in rank order ([n] when not distributed)."""
    world = world_size(group)
    if world == 1:
        return [n]
    # One int64 per rank; on NCCL it must live on the GPU, hence `device`.
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    out = torch.empty(world, dtype=torch.int64, device=device)
    dist.all_gather_single(out, mine, group=group)
    return out.tolist()


def pad_rows(x: Tensor, rows: int) -> Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    return torch.cat([x, x.new_zeros((rows - x.shape[0],) + tuple(x.shape[1:]))])


def all_gather_padded(x: Tensor, sizes: Sequence[int], group=None) -> Tensor:
    """Every rank's `x` [sizes[r], ...] concatenated in rank order (not differentiable: training wraps it)."""
    most = max(sizes)
    out = x.new_empty((len(sizes) * most,) + tuple(x.shape[1:]))
    if most == 0:  # every rank knows every size, so all skip the collective together
        return out
    dist.all_gather_single(out, pad_rows(x, most), group=group)
    if all(s == most for s in sizes):
        return out
    # [world * most, ...] -> drop each rank's pad rows.
    return torch.cat([out[r * most: r * most + s] for r, s in enumerate(sizes)])
