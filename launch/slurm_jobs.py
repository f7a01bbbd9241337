"""`clipforge launch slurm convert|eval`: the converter as a slurm array (+ a dependent merge job)
and eval as its own job. Arguments after `--` go to `clipforge convert` / `clipforge eval` as-is
(each quoted into the script)."""
import argparse
import os
import shlex
import sys
from typing import List

from clipforge.errors import UserError
from clipforge.launch.arguments import EXAMPLES, add_slurm_args, slurm_options
from clipforge.launch.slurm import SlurmOptions, q, sbatch_header, env_exports, submit, write_script
from clipforge.launch.torchrun import LaunchError

HEADER = """#!/bin/bash
# Written by `clipforge launch slurm {kind}`. Self-contained: `sbatch {script}` submits it again.
{sbatch}
set -uo pipefail
cd {workdir} || exit 1
{exports}
"""


def _split(argv: List[str]):
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"clipforge launch slurm {kind}", epilog=EXAMPLES,
                                usage=f"clipforge launch slurm {kind} [options] -- <clipforge {kind} arguments>",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_slurm_args(p)
    p.add_argument("--python", default=sys.executable, help="interpreter with clipforge installed")
    p.add_argument("--dry-run", action="store_true", help="print the script(s), write and submit nothing")
    if kind == "convert":
        p.add_argument("--parts", type=int, required=True, help="array tasks, each converts 1/parts of the shards")
        p.add_argument("--out", required=True, help="output folder of the shard dataset (clipforge convert --out)")
        p.add_argument("--job-dir", help="scripts and logs (default: OUT.slurm next to --out)")
    else:
        p.add_argument("--job-dir", required=True, help="scripts and logs of this eval job")
    return p


def _clipforge(python: str, command: str, args: List[str]) -> str:
    return " ".join([q(python, "--python"), "-m", "clipforge.launch.cli", command] + [q(a, "argument") for a in args])


def convert_scripts(opts: SlurmOptions, parts: int, out: str, job_dir: str, workdir: str, convert_args: List[str]):
    """(array script, merge script). Task i converts the shards with index % parts == i."""
    if parts < 1:
        raise LaunchError(f"--parts {parts}: must be >= 1")
    for flag in ("--out", "--num-nodes", "--node-rank", "--merge-only"):
        if any(a == flag or a.startswith(flag + "=") for a in convert_args):
            raise LaunchError(f"give {flag} to `launch slurm convert`, not after `--` (launch sets it per task)")
    if not convert_args:
        raise LaunchError("no converter inputs: put them after `--`, e.g. -- captions.csv --image-size 256")
    array = HEADER.format(
        kind="convert", script=q(os.path.join(job_dir, "convert.sbatch")), workdir=q(workdir, "working directory"),
        sbatch=sbatch_header(opts, "clipforge-convert", job_dir, "convert-%A_%a.out", 1,
                             [f"--array=0-{parts - 1}"]),
        exports=env_exports(opts, 1))
    array += ("# the array index is this task's node rank; complete shards are skipped on a rerun\n"
              f"srun {_clipforge(opts.python, 'convert', convert_args)} \\\n"
              f"    --out {q(out, '--out')} --num-nodes {parts} --node-rank \"$SLURM_ARRAY_TASK_ID\" --no-progress\n")
    merge_opts = SlurmOptions(partition=opts.partition, account=opts.account, qos=opts.qos, time=opts.time,
                              env=opts.env, python=opts.python, gpus_per_node=0)
    merge = HEADER.format(
        kind="convert (merge)", script=q(os.path.join(job_dir, "merge.sbatch")), workdir=q(workdir),
        sbatch=sbatch_header(merge_opts, "clipforge-merge", job_dir, "merge-%j.out", 1),
        exports=env_exports(merge_opts, 1))
    merge += ("# submitted with --dependency=afterok:<array job>: runs once every part has succeeded\n"
              f"srun {_clipforge(opts.python, 'convert', ['--merge-only', '--out', out])}\n")
    return array, merge


def eval_script(opts: SlurmOptions, job_dir: str, workdir: str, eval_args: List[str]) -> str:
    """One torchrun per node, every rank embeds its share (eval joins the torchrun process group)."""
    if not eval_args:
        raise LaunchError("no eval arguments: put them after `--`, e.g. -- --model RUN --data DIR --task retrieval")
    text = HEADER.format(
        kind="eval", script=q(os.path.join(job_dir, "eval.sbatch")), workdir=q(workdir, "working directory"),
        sbatch=sbatch_header(opts, "clipforge-eval", job_dir, "eval-%j.out", 1),
        exports=env_exports(opts, opts.ranks_per_node))
    args = " ".join(q(a, "argument") for a in eval_args)
    return text + (
        "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n"
        "MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))\n"
        f"srun --label --kill-on-bad-exit=1 {q(opts.python, '--python')} -m torch.distributed.run "
        f"--nproc-per-node={opts.ranks_per_node} \\\n"
        "    --nnodes=\"$SLURM_JOB_NUM_NODES\" --rdzv-backend=c10d --rdzv-id=\"$SLURM_JOB_ID\" "
        "--rdzv-endpoint=\"$MASTER_ADDR:$MASTER_PORT\" \\\n"
        f"    -m clipforge.eval {args}\n")


def main(argv: List[str]) -> int:
    kind, rest = argv[0], argv[1:]
    ours, theirs = _split(rest)
    args = _parser(kind).parse_args(ours)
    workdir = os.getcwd()
    try:
        opts = slurm_options(args)
        if kind == "convert":
            out = os.path.abspath(args.out)
            job_dir = os.path.abspath(args.job_dir or out.rstrip("/") + ".slurm")
            scripts = dict(zip(("convert.sbatch", "merge.sbatch"),
                               convert_scripts(opts, args.parts, out, job_dir, workdir, theirs)))
        else:
            job_dir = os.path.abspath(args.job_dir)
            scripts = {"eval.sbatch": eval_script(opts, job_dir, workdir, theirs)}
        paths = {name: os.path.join(job_dir, name) for name in scripts}
        if args.dry_run:
            for name, text in scripts.items():
                print(f"# ---- {shlex.quote(paths[name])}\n{text}", end="")
            return 0
        for name, text in scripts.items():
            write_script(paths[name], text)
        first = submit(paths[next(iter(scripts))])
        print(f"clipforge launch: submitted {kind} job {first}: {paths[next(iter(scripts))]} (logs in {job_dir})")
        if kind == "convert":
            merge_id = submit(paths["merge.sbatch"], [f"--dependency=afterok:{first}", "--kill-on-invalid-dep=yes"])
            print(f"clipforge launch: submitted merge job {merge_id} (runs after every part of job {first} succeeded)")
        return 0
    except UserError as err:  # anything else is a bug: its traceback, exit 1
        print(f"clipforge launch: error: {err}", file=sys.stderr)
        return 2
