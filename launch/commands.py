"""`clipforge launch local|slurm`: one config -> the right torchrun / sbatch command lines.

Imports no torch or deepspeed (login nodes have neither): the config, its paths and the run dir are
checked with the torch-free `modeling.config` / `pretrain.preflight` / `pretrain.rundir` before anything
is spawned or submitted; the ranks run under `python -m clipforge.pretrain.torchrun` (torchrun) in a child.
"""
import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
from typing import List, Optional

from clipforge.dataclass_cli import add_fields, field_values
from clipforge.errors import UserError
from clipforge.launch import slurm_jobs
from clipforge.launch.arguments import EXAMPLES, add_slurm_args, slurm_options
from clipforge.launch.resources import cpus_per_task, local_nproc, slurm_gpus, visible_gpus
from clipforge.launch.slurm import TrainJob, render_train_script, submit, write_script
from clipforge.launch.torchrun import LaunchError, LocalLaunchOptions, local_env, pretrain_args, torchrun_args
from clipforge.modeling.config import ConfigError, RunConfig, check_batch_split, load_config
from clipforge.modeling.config_checks import check_decode_device
from clipforge.pretrain.preflight import preflight, unknown_flag_message
from clipforge.pretrain.rundir import already_done, check_resume, describe, finished, target_steps

USAGE = """usage: clipforge launch local|slurm --config FILE [options] [dotted.key=value ...]

  local   torchrun on this node (or one node of a multi-node rendezvous)
  slurm   write RUN/slurm/pretrain.sbatch and submit it (also: slurm convert, slurm eval)

`clipforge launch local --help`, `clipforge launch slurm --help` list the options.
"""


def _parser(mode: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"clipforge launch {mode}", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_args(p)
    if mode == "local":
        add_fields(p, LocalLaunchOptions)
        return p
    add_slurm_args(p)
    add_fields(p, TrainJob)   # --launcher, --signal-seconds, --max-requeues
    return p


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config YAML (see configs/)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter with torch that runs the ranks (default: this one)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the command / script and whether the run resumes; run and write nothing")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.steps=100 optim.lr=1e-4")


def _checked(args: argparse.Namespace, cfg: RunConfig, world_size: int) -> Optional[str]:
    """Every check a rank would make before training, here: None to go on, or the line that ends the
    launch with exit 0 (a finished run). A dry run reports a path problem and prints the command anyway
    (it is often run away from the cluster's file systems); a real launch refuses it."""
    check_batch_split(cfg, world_size)
    try:
        preflight(cfg)
    except ConfigError as err:
        if not args.dry_run:
            raise
        print(f"clipforge launch: warning: {err} (a launch without --dry-run refuses this)", file=sys.stderr)
    point = check_resume(cfg, world_size)
    if args.dry_run:
        print(f"clipforge launch: {describe(point, cfg)}", file=sys.stderr)
    if finished(point, cfg):
        return already_done(point.step, target_steps(cfg))
    return None


def run_forwarding_signals(argv: List[str], env: dict) -> int:
    """Run the child, pass SIGTERM/SIGUSR1/SIGHUP on to it, return its exit code (128+N if killed)."""
    children = []   # handlers first: an early SIGTERM must not kill the launcher and orphan torchrun

    def forward(sig, _frame):
        for child in children:
            child.send_signal(sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)}
    try:
        child = subprocess.Popen(argv, env=env)
        children.append(child)
        while True:
            try:
                rc = child.wait()
                break
            except KeyboardInterrupt:  # Ctrl-C reached the child too (same process group): let it stop
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - rc if rc < 0 else rc


def launch_local(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    local = LocalLaunchOptions(**field_values(args, LocalLaunchOptions))
    gpus = visible_gpus()
    check_decode_device(cfg, gpus > 0)  # data.decode=gpu with train.device=auto on a node without GPUs
    nproc = local_nproc(local.nproc, cfg.train.device, gpus)
    rdzv = local.rendezvous(cfg.train.run_dir)
    argv = [args.python, *torchrun_args(nproc, rdzv), *pretrain_args(args.config, args.overrides)]
    done = _checked(args, cfg, nproc * local.nnodes)
    if done and not args.dry_run:
        print(f"clipforge launch: {done}", file=sys.stderr)
        return 0
    env = local_env(dict(os.environ), nproc, cfg.train.device)
    if args.dry_run:   # copy-pastable: the variables launch adds, then the command
        added = [f"{k}={v}" for k, v in sorted(env.items()) if os.environ.get(k) != v]
        print(shlex.join(added + argv))
        return 0
    _warn_without_torch(args.python)
    print(f"clipforge launch: {shlex.join(argv)}", file=sys.stderr, flush=True)
    return run_forwarding_signals(argv, env)


def launch_slurm(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    args.gpus_per_node = slurm_gpus(args.gpus_per_node, cfg.train.device, args.config)
    opts = slurm_options(args)
    if opts.cpus_per_task is None:
        opts.cpus_per_task = cpus_per_task(opts.ranks_per_node if args.launcher == "torchrun" else 1,
                                           cfg.data.workers)
    if args.signal_seconds < 1 or args.max_requeues < 0:
        raise LaunchError("--signal-seconds must be >= 1 and --max-requeues >= 0")
    done = _checked(args, cfg, opts.nodes * opts.ranks_per_node)
    if done and not args.dry_run:
        print(f"clipforge launch: {done}; nothing submitted", file=sys.stderr)
        return 0
    run_dir = os.path.abspath(cfg.train.run_dir)
    # the job reads a copy made at submission: editing the YAML later cannot change a queued or requeued run
    config_copy = os.path.join(run_dir, "slurm", "submitted-config.yaml")
    job = TrainJob(opts=opts, run_dir=run_dir, workdir=os.getcwd(), config=config_copy,
                   overrides=list(args.overrides), **field_values(args, TrainJob))
    script = render_train_script(job)
    if args.dry_run:
        print(f"# would copy {shlex.quote(args.config)} to {shlex.quote(config_copy)}, write this script to "
              f"{shlex.quote(job.script_path)} and run: sbatch --parsable {shlex.quote(job.script_path)}")
        print(script, end="")
        return 0
    os.makedirs(os.path.dirname(config_copy), exist_ok=True)
    shutil.copyfile(args.config, config_copy)
    write_script(job.script_path, script)
    done = os.path.join(job.run_dir, "DONE")
    if os.path.exists(done):   # a new submission means: train (again, resuming); DONE only guards requeues
        os.remove(done)
    job_id = submit(job.script_path)
    print(f"clipforge launch: submitted job {job_id}: {job.script_path}\n"
          f"  log: {os.path.join(job.run_dir, 'slurm', 'slurm-' + job_id + '.out')}  (squeue -j {job_id})")
    return 0


def _warn_without_torch(python: str) -> None:
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        import importlib.util   # find_spec locates torch without importing it
        if importlib.util.find_spec("torch") is None:
            print(f"clipforge launch: warning: torch is not installed for {python}; pass --python PATH "
                  "(an interpreter with torch)", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["slurm"] and argv[1:2] in (["convert"], ["eval"]):
        return slurm_jobs.main(argv[1:])
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE + "\n" + EXAMPLES)
        return 0
    mode = argv[0]
    if mode not in ("local", "slurm"):
        print(f"clipforge launch: unknown mode {mode!r}; choose local or slurm (see clipforge launch --help)",
              file=sys.stderr)
        return 2
    parser = _parser(mode)
    args, extras = parser.parse_known_intermixed_args(argv[1:])
    if extras:   # `--lr 1e-4` -> "did you mean optim.lr=1e-4?"
        message = unknown_flag_message(extras, argv) or f"unexpected arguments {' '.join(extras)}"
        print(f"clipforge launch: error: {message}", file=sys.stderr)
        return 2
    try:
        return launch_local(args) if mode == "local" else launch_slurm(args)
    except UserError as err:  # anything else is a bug: its traceback, exit 1
        print(f"clipforge launch: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
