"""How many ranks, GPUs and CPUs a launch asks for, from the config and the machine (torch-free).

A GPU recipe launched without a word about GPUs used to become one CPU rank per node; a CPU recipe
with GPUs requested trained on the CPU while holding the GPUs. Both are decided here, before
anything is spawned or submitted.
"""
import os
import shutil
import subprocess
from typing import Mapping, Optional

from clipforge.launch.torchrun import LaunchError


def visible_gpus(env: Mapping[str, str] = os.environ) -> int:
    """CUDA devices this process could use, without importing torch: CUDA_VISIBLE_DEVICES when set
    (what torch would honour), else the GPUs `nvidia-smi -L` lists (0 without the tool)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        # torch stops at the first invalid id ("-1" is the usual way of hiding every GPU)
        count = 0
        for device in ids:
            if device.startswith("-"):
                break
            count += 1
        return count
    tool = shutil.which("nvidia-smi", path=env.get("PATH"))
    if tool is None:
        return 0
    try:
        out = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def local_nproc(given: Optional[int], device: str, gpus: int) -> int:
    """Ranks for `launch local`: one per visible GPU by default on a GPU config, else 1."""
    if device == "cuda" and gpus == 0:
        raise LaunchError("train.device=cuda but no CUDA device is visible (nvidia-smi / CUDA_VISIBLE_DEVICES); "
                          "run on a GPU node, or set train.device=cpu")
    if given is None:
        return gpus if device != "cpu" and gpus > 0 else 1
    if device != "cpu" and 0 < gpus < given:
        raise LaunchError(f"--nproc {given} but only {gpus} CUDA device(s) are visible: give --nproc {gpus} "
                          "(one rank per GPU), or set train.device=cpu for CPU ranks")
    return given


def slurm_gpus(given: Optional[int], device: str, config: str) -> int:
    """GPUs per node for `launch slurm`: 0 for a CPU config, required for a GPU one."""
    if device == "cpu":
        if given:
            raise LaunchError(f"--gpus-per-node {given} with a CPU config (train.device=cpu in {config}): the GPUs "
                              "would sit idle; drop --gpus-per-node, or set train.device=cuda")
        return 0
    if given is None:
        raise LaunchError(f"{config} trains on GPUs (train.device={device}): give --gpus-per-node G (ranks per "
                          "node, e.g. 8), or set train.device=cpu for a CPU job")
    if given == 0 and device == "cuda":
        raise LaunchError("--gpus-per-node 0 with train.device=cuda: give the GPUs per node, or set train.device=cpu")
    return given


def cpus_per_task(ranks_per_task: int, loader_workers: int) -> int:
    """Every rank's own process plus its loader workers: fewer cores starve the loader (docs/scaling.md)."""
    return ranks_per_task * (loader_workers + 1)
