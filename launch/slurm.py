"""Self-contained sbatch scripts and their submission (`clipforge launch slurm`).

Every value that comes from a user (paths, overrides, partition, ...) is written through `q()`:
shlex-quoted, so `$(...)`, quotes and spaces stay literal both for bash and for sbatch's own
`#SBATCH` line parser (which understands the same single quotes); values with a newline are
refused, because a newline would end an `#SBATCH` line or a comment early.
"""
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import List, Optional, Sequence

from clipforge.launch import sbatch_templates
from clipforge.launch.torchrun import FORWARDED_SIGNALS, LaunchError

from clipforge.atomic import write_atomic
from clipforge.dataclass_cli import option

# minutes | MM:SS | HH:MM:SS | D-HH | D-HH:MM | D-HH:MM:SS (sbatch --time formats)
_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def q(value, what: str = "value") -> str:
    """Shell-quote one value for a generated script; refuse control characters that end a line."""
    text = str(value)
    if any(ch in text for ch in "\n\r\0"):
        raise LaunchError(f"{what} {text!r} contains a newline or NUL; refusing to write it into an sbatch script")
    return shlex.quote(text)


def slurm_filename(path: str) -> str:
    """A path for --output: '%' is a slurm filename pattern character, '%%' is a literal '%'."""
    return path.replace("%", "%%")


@dataclass
class SlurmOptions:
    """Resources and job settings shared by every kind of job launch writes; the option() fields are the slurm
    flags of every `clipforge launch slurm` parser (launch/arguments.py)."""
    nodes: int = option(1, "nodes of the job")
    # type: the flag's own default is None (launch/arguments.py), which would make it a str
    gpus_per_node: int = option(0, "GPUs (= ranks) per node; required for a GPU config, 0 (default) = CPU job",
                                type=int)
    procs_per_node: int = option(1, "CPU ranks per node when --gpus-per-node 0")
    cpus_per_task: Optional[int] = option(None, "default: every rank of the task plus its data.workers loader "
                                                "processes", type=int)
    partition: Optional[str] = option(None, "sbatch --partition")
    account: Optional[str] = option(None, "sbatch --account")
    time: Optional[str] = option(None, "sbatch --time: the job's time limit (minutes, HH:MM:SS or D-HH:MM:SS)")
    qos: Optional[str] = option(None, "sbatch --qos")
    constraint: Optional[str] = option(None, "sbatch --constraint")
    mem: Optional[str] = option(None, "sbatch --mem")
    exclusive: bool = option(False, "sbatch --exclusive")
    env: List[str] = option([], "export this in the job script (repeatable)", action="append", metavar="NAME=VALUE")
    python: str = "python3"          # each parser's --python has its own help (and sys.executable as default)

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_node if self.gpus_per_node > 0 else self.procs_per_node

    def validate(self) -> None:
        if self.nodes < 1:
            raise LaunchError(f"--nodes {self.nodes}: must be >= 1")
        if self.gpus_per_node < 0:
            raise LaunchError(f"--gpus-per-node {self.gpus_per_node}: must be >= 0 (0 = CPU job)")
        if self.procs_per_node < 1:
            raise LaunchError(f"--procs-per-node {self.procs_per_node}: must be >= 1")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise LaunchError(f"--cpus-per-task {self.cpus_per_task}: must be >= 1")
        if self.time is not None and not _TIME.match(self.time):
            raise LaunchError(f"--time {self.time!r}: use minutes, HH:MM:SS or D-HH:MM:SS (e.g. 48:00:00)")
        for item in self.env:
            name, sep, _ = item.partition("=")
            if not sep or not _ENV_NAME.match(name):
                raise LaunchError(f"--env {item!r}: expected NAME=VALUE with a shell variable name")


def sbatch_header(opts: SlurmOptions, job_name: str, log_dir: str, log_pattern: str, ntasks_per_node: int,
                  extra: Sequence[str] = ()) -> str:
    """The #SBATCH lines: resources from opts, then job-specific extras (already formatted).
    log_pattern is a slurm filename pattern (slurm-%j.out); log_dir is taken literally."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", job_name)[:64] or "clipforge"
    lines = [f"--job-name={name}", f"--nodes={opts.nodes}", f"--ntasks-per-node={ntasks_per_node}"]
    if opts.gpus_per_node > 0:
        lines.append(f"--gpus-per-node={opts.gpus_per_node}")
    if opts.cpus_per_task is not None:
        lines.append(f"--cpus-per-task={opts.cpus_per_task}")
    for flag, value in (("partition", opts.partition), ("account", opts.account), ("time", opts.time),
                        ("qos", opts.qos), ("constraint", opts.constraint), ("mem", opts.mem)):
        if value is not None:
            lines.append(f"--{flag}={q(value, '--' + flag)}")
    if opts.exclusive:
        lines.append("--exclusive")
    # append: a requeued job (same id) adds to its log instead of truncating the first attempt's
    log_file = os.path.join(slurm_filename(log_dir), log_pattern)
    lines += [f"--output={q(log_file, 'log file')}", "--open-mode=append", *extra]
    return "\n".join(f"#SBATCH {line}" for line in lines)


def env_exports(opts: SlurmOptions, ranks_per_task: int) -> str:
    """Environment every job sets: threads per rank, NCCL error handling, user --env values."""
    lines = [
        "# OpenMP threads per rank: the task's CPUs split over the ranks it runs (values set by the user win)",
        f"threads=$(( ${{SLURM_CPUS_PER_TASK:-1}} / {ranks_per_task} )); [ \"$threads\" -ge 1 ] || threads=1",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"',
        'export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"',
        "# a failed NCCL collective raises instead of hanging until the job's time limit",
        'export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"',
        "export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false",
    ]
    if opts.gpus_per_node == 0:
        lines.append("export DS_ACCELERATOR=cpu")
    for item in opts.env:
        name, _, value = item.partition("=")
        lines.append(f"export {name}={q(value, '--env ' + name)}")
    return "\n".join(lines)


@dataclass
class TrainJob:
    """Everything the pretrain sbatch script needs; all paths absolute."""
    opts: SlurmOptions
    run_dir: str
    workdir: str
    config: str
    overrides: List[str]
    launcher: str = option("torchrun", "torchrun: one task per node running torchrun (c10d on the first node); "
                           "srun: one task per rank, SLURM_* mapped to RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR",
                           choices=("torchrun", "srun"))
    signal_seconds: int = option(300, "slurm sends SIGUSR1 this long before --time; the trainer checkpoints, "
                                      "the job requeues")
    max_requeues: int = option(20, "stop requeueing after this many restarts")

    @property
    def script_path(self) -> str:
        return os.path.join(self.run_dir, "slurm", "pretrain.sbatch")


def _rank_command(job: TrainJob) -> str:
    """The srun line (continued over several lines); `"${resume[@]}"` is filled in at run time."""
    opts = job.opts
    words = [q(a, "argument") for a in ["-m", "clipforge.pretrain", "--config", job.config]]
    words += [q(o, "override") for o in job.overrides]
    tail = " ".join(words + ['"${resume[@]}"'])
    if job.launcher == "torchrun":
        return (f"srun --label --kill-on-bad-exit=1 --ntasks-per-node=1 \\\n"
                f"    {q(opts.python, '--python')} -m torch.distributed.run --nproc-per-node={opts.ranks_per_node} \\\n"
                f"    --nnodes=\"$SLURM_JOB_NUM_NODES\" --rdzv-backend=c10d --rdzv-id=\"$SLURM_JOB_ID\" \\\n"
                f"    --rdzv-endpoint=\"$MASTER_ADDR:$MASTER_PORT\" \\\n"
                f"    --signals-to-handle={FORWARDED_SIGNALS} --shutdown-timeout={job.signal_seconds} \\\n"
                f"    {tail}")
    if job.launcher == "srun":
        # one task per rank: slurm's task ids are the torch.distributed ranks
        mapping = ("export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID "
                   "LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE; exec \"$@\"")
        return (f"srun --label --kill-on-bad-exit=1 --ntasks-per-node={opts.ranks_per_node} \\\n"
                f"    bash -c {shlex.quote(mapping)} clipforge-rank \\\n"
                f"    {q(opts.python, '--python')} {tail}")
    raise LaunchError(f"--launcher {job.launcher!r}: allowed values are torchrun, srun")


def render_train_script(job: TrainJob) -> str:
    job.opts.validate()
    if job.signal_seconds < 1:
        raise LaunchError(f"--signal-seconds {job.signal_seconds}: must be >= 1")
    per_task = job.opts.ranks_per_node if job.launcher == "torchrun" else 1
    ntasks = 1 if job.launcher == "torchrun" else job.opts.ranks_per_node
    log_dir = os.path.join(job.run_dir, "slurm")
    header = sbatch_header(job.opts, "clipforge-" + os.path.basename(job.run_dir.rstrip("/")),
                           log_dir, "slurm-%j.out", ntasks,
                           ["--requeue", f"--signal=B:USR1@{job.signal_seconds}"])
    return sbatch_templates.fill(sbatch_templates.PRETRAIN, {
        "HEADER": header,
        "SCRIPT": q(job.script_path, "script path"),
        "RUN_DIR": q(job.run_dir, "train.run_dir"),
        "LOG_DIR": q(log_dir, "log dir"),
        "WORKDIR": q(job.workdir, "working directory"),
        "EXPORTS": env_exports(job.opts, per_task),
        "SRUN": _rank_command(job),
        "MAX_REQUEUES": str(job.max_requeues),
    })


def write_script(path: str, text: str) -> None:
    """Atomic write, executable (the script is also a record of how the run was started)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, text, mode=0o755)


def submit(script: str, extra_args: Sequence[str] = ()) -> str:
    """`sbatch --parsable [extra] SCRIPT` -> job id; a clear error when sbatch is missing or refuses."""
    try:
        result = subprocess.run(["sbatch", "--parsable", *extra_args, script],
                                capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise LaunchError("sbatch not found on PATH: run `clipforge launch slurm` on a slurm login node "
                          f"(the script is written: {script}; or use --dry-run to only print it)") from None
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise LaunchError(f"sbatch refused {script}: {message[-1] if message else 'exit ' + str(result.returncode)}")
    return result.stdout.strip().split(";")[0]
