"""torchrun command lines for `clipforge launch local` (and the per-node part of a slurm job).

torchrun is run as `python -m clipforge.pretrain.torchrun` (= `python -m torch.distributed.run`, plus one-line
user errors) with the interpreter that has torch, so launch itself never imports torch (login nodes)
and no `torchrun` needs to be on PATH.
"""
import hashlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from clipforge.dataclass_cli import option
from clipforge.errors import UserError

# torchrun forwards these to the workers (SIGUSR1 added: slurm's warning signal before the time
# limit; the trainer checkpoints on it). The default list lacks SIGUSR1, and an unhandled
# SIGUSR1 would kill the agent and orphan the workers mid-checkpoint.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


class LaunchError(UserError, ValueError):
    """A launch flag is wrong; the message names the flag and what to do."""


@dataclass
class Rendezvous:
    """How the torchrun agents of a multi-node job find each other (from LocalLaunchOptions)."""
    nnodes: int
    node_rank: int
    endpoint: Optional[str]          # HOST:PORT of the c10d store (node 0's address)
    backend: str                     # c10d (agents rank themselves) or static (ranks = --node-rank)
    run_id: str


def run_id_for(run_dir: str) -> str:
    """Rendezvous id both nodes derive from the same config: the run dir's absolute path."""
    digest = hashlib.sha256(os.path.abspath(run_dir).encode()).hexdigest()[:12]
    return f"clipforge-{digest}"


@dataclass
class LocalLaunchOptions:
    """`clipforge launch local`'s own flags: the ranks on this node and the rendezvous of a multi-node run."""
    nproc: Optional[int] = option(None, "ranks on this node (default: one per visible GPU for a GPU config, else 1; "
                                        "CPU processes with train.device=cpu)", type=int)
    nnodes: int = option(1, "nodes in the rendezvous (default 1: standalone)")
    node_rank: int = option(0, "this node's rank (0 hosts the rendezvous)")
    rdzv_endpoint: Optional[str] = option(None, "HOST:PORT of node rank 0, the same on every node")
    rdzv_backend: str = option("c10d", "c10d (default) or static (ranks follow --node-rank; endpoint = master "
                                       "addr:port)", choices=("c10d", "static"))
    rdzv_id: Optional[str] = option(None, "rendezvous id (default: derived from train.run_dir, same on every node)")

    def rendezvous(self, run_dir: str) -> Rendezvous:
        return Rendezvous(nnodes=self.nnodes, node_rank=self.node_rank, endpoint=self.rdzv_endpoint,
                          backend=self.rdzv_backend, run_id=self.rdzv_id or run_id_for(run_dir))


def check_endpoint(endpoint: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(f"--rdzv-endpoint {endpoint!r}: expected HOST:PORT, e.g. 10.0.0.1:29500 "
                          "(the address of node rank 0 and a free port there)")


def torchrun_args(nproc: int, rdzv: Rendezvous, shutdown_timeout: int = 30) -> List[str]:
    """torchrun's flags after the interpreter (without the training module). The module is
    pretrain.torchrun: torchrun itself, except that a rank's user error ends the run in its one line."""
    if nproc < 1:
        raise LaunchError(f"--nproc {nproc}: must be >= 1")
    args = ["-m", "clipforge.pretrain.torchrun", f"--nproc-per-node={nproc}",
            f"--signals-to-handle={FORWARDED_SIGNALS}", f"--shutdown-timeout={shutdown_timeout}"]
    if rdzv.nnodes == 1 and rdzv.endpoint is None:
        # torchrun binds its rendezvous store to port 0: the OS picks a free port, no race.
        return args + ["--standalone"]
    if rdzv.nnodes < 1:
        raise LaunchError(f"--nnodes {rdzv.nnodes}: must be >= 1")
    if not 0 <= rdzv.node_rank < rdzv.nnodes:
        raise LaunchError(f"--node-rank {rdzv.node_rank}: must be in [0, {rdzv.nnodes - 1}] for --nnodes {rdzv.nnodes}")
    if rdzv.endpoint is None:
        raise LaunchError(f"--nnodes {rdzv.nnodes} needs --rdzv-endpoint HOST:PORT (node rank 0's address; "
                          "give every node the same one)")
    check_endpoint(rdzv.endpoint)
    args += [f"--nnodes={rdzv.nnodes}", f"--node-rank={rdzv.node_rank}", f"--rdzv-id={rdzv.run_id}"]
    if rdzv.backend == "static":
        host, _, port = rdzv.endpoint.rpartition(":")
        return args + ["--rdzv-backend=static", f"--master-addr={host}", f"--master-port={port}"]
    if rdzv.backend != "c10d":
        raise LaunchError(f"--rdzv-backend {rdzv.backend!r}: allowed values are c10d, static")
    return args + ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv.endpoint}"]


def pretrain_args(config: str, overrides: Sequence[str]) -> List[str]:
    """What every rank runs: `python -m clipforge.pretrain --config F overrides...`."""
    return ["-m", "clipforge.pretrain", "--config", config, *overrides]


def local_env(base: Dict[str, str], nproc: int, device: str, cpu_count: Optional[int] = None) -> Dict[str, str]:
    """The launcher's environment plus sane per-rank defaults; values the user set win.

    OMP_NUM_THREADS: the node's cores split over the ranks (torchrun would force 1 with a
    warning, which starves a single big CPU rank). DS_ACCELERATOR=cpu on CPU runs (DeepSpeed
    otherwise probes for CUDA and prints to stdout).
    """
    cores = cpu_count or os.cpu_count() or 1
    env = dict(base)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if device == "cpu":
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env
