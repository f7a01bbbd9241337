"""What every `clipforge launch` parser shares (launch local|slurm in commands.py, launch slurm convert|eval in
slurm_jobs.py): the examples their --help ends with, and the slurm resource flags, built from SlurmOptions's
fields and read back into it."""
import argparse

from clipforge.dataclass_cli import add_fields, field_values
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
    # no --gpus-per-node means "decide from the config" for a training job (resources.slurm_gpus), 0 elsewhere
    add_fields(p, SlurmOptions, defaults={"gpus_per_node": None})


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    values = field_values(args, SlurmOptions)
    opts = SlurmOptions(**{**values, "gpus_per_node": values["gpus_per_node"] or 0, "env": list(values["env"])},
                        python=args.python)
    opts.validate()
    return opts
