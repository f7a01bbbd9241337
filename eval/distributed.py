"""torch.distributed for eval: join the job torchrun/srun started, and the collectives metrics need.

Start-up and the variable-size all-gather are `modeling.distributed`'s, the ones training uses too.
Every rank calls every collective the same number of times (a rank with no samples contributes empty
tensors), so a rank with nothing to embed never leaves the others waiting.
"""
import os
from datetime import timedelta
from typing import List

import torch
import torch.distributed as dist

from clipforge.eval.retrieval import Comm
from clipforge.modeling.distributed import all_gather_padded, env_from_srun, gather_sizes, rank_world, start_process_group

__all__ = ["init_from_env", "rank_world", "TorchComm", "comm_for_world"]


def init_from_env() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) or srun (SLURM_NTASKS > 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    env_from_srun()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    start_process_group(torch.cuda.is_available(), lambda backend: dist.init_process_group(
        backend, timeout=timedelta(minutes=30)))
    return True


class TorchComm(Comm):
    """Variable-length all-gather (pad to the longest, trim) and sum/max all-reduce on the default group.
    NCCL only moves CUDA tensors: inputs are moved to the backend's device and results moved back."""

    def __init__(self):
        nccl = dist.get_backend() == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def all_gather_cat(self, x: torch.Tensor) -> torch.Tensor:
        sizes = gather_sizes(len(x), self.device)
        return all_gather_padded(x.to(self.device), sizes).to(x.device)

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
