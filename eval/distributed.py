"""torch.distributed for eval: join the job torchrun/srun started, and the two collectives metrics need.

Every rank calls every collective the same number of times (a rank with no samples contributes empty
tensors), so a rank with nothing to embed never leaves the others waiting.
"""
import os
from datetime import timedelta
from typing import List

import torch
import torch.distributed as dist

from clipforge.eval.retrieval import Comm


def init_from_env() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) or srun (SLURM_NTASKS > 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and "SLURM_PROCID" in os.environ:
        # plain srun: map slurm's variables to env:// ones (MASTER_ADDR/PORT must be exported by the job)
        os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
        os.environ.setdefault("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return True


def rank_world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TorchComm(Comm):
    """Variable-length all-gather (pad to the longest, trim) and sum/max all-reduce on the default group.
    NCCL only moves CUDA tensors: inputs are moved to the backend's device and results moved back."""

    def __init__(self):
        nccl = dist.get_backend() == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def all_gather_cat(self, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        size = torch.tensor([len(x)], device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest,) + tuple(x.shape[1:]), dtype=x.dtype, device=self.device)
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)]).to(x.device)

    def _reduce(self, x: torch.Tensor, op) -> torch.Tensor:
        out = x.to(self.device, copy=True)
        dist.all_reduce(out, op=op)
        return out.to(x.device)

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(x, dist.ReduceOp.SUM)

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(x, dist.ReduceOp.MAX)

    def gather_objects(self, obj) -> List:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out


def comm_for_world() -> Comm:
    return TorchComm() if rank_world()[1] > 1 else Comm()
