"""What every `clipforge launch` parser shares (launch local|slurm in commands.py, launch slurm convert|eval in
slurm_jobs.py): the examples their --help ends with, and the slurm resource flags -> SlurmOptions."""
import argparse

from clipforge.launch.slurm import SlurmOptions

EXAMPLES = """examples:
  # after `clipforge demo` (it writes runs/demo/shards-train); train.steps replaces the file's train.epochs:
  clipforge launch local --config configs/demo-cpu.yaml --nproc 2 train.steps=50 train.run_dir=runs/demo/steps50
  # two machines (run on each, same endpoint = node rank 0's address and a free port):
  clipforge launch local --config C.yaml --nproc 8 --nnodes 2 --node-rank 0 --rdzv-endpoint 10.0.0.1:29500
  clipforge launch slurm --config configs/vit-l-14-multinode-zero2.yaml --nodes 16 --gpus-per-node 8 \\
      --partition gpu --time 48:00:00 --dry-run
  clipforge launch slurm convert --parts 16 --out shards/ -- urls.parquet --image-size 256 --workers 8
  clipforge launch slurm eval --job-dir runs/x/eval-job --gpus-per-node 1 -- --model runs/x --data val/ --task retrieval
"""


def add_slurm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int,
                   help="GPUs (= ranks) per node; required for a GPU config, 0 (default) = CPU job")
    p.add_argument("--procs-per-node", type=int, default=1, help="CPU ranks per node when --gpus-per-node 0")
    p.add_argument("--cpus-per-task", type=int,
                   help="default: every rank of the task plus its data.workers loader processes")
    for flag in ("partition", "account", "time", "qos", "constraint", "mem"):
        p.add_argument(f"--{flag}")
    p.add_argument("--exclusive", action="store_true")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="export this in the job script (repeatable)")


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    opts = SlurmOptions(nodes=args.nodes, gpus_per_node=args.gpus_per_node or 0, procs_per_node=args.procs_per_node,
                        cpus_per_task=args.cpus_per_task, partition=args.partition, account=args.account,
                        time=args.time, qos=args.qos, constraint=args.constraint, exclusive=args.exclusive,
                        mem=args.mem, env=list(args.env), python=args.python)
    opts.validate()
    return opts
