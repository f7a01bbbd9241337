"""Checkpoints: every N steps and every M minutes, on SIGTERM/SIGUSR1, atomic, last K kept.

    RUN/checkpoints/step00000120/     DeepSpeed files + trainer_state.json + rng/rank<r>.json
                                      (+ consolidated.pt at ZeRO >= 1: resumes on another world size)
    RUN/checkpoints/latest            "step00000120" (written last, atomically)

Atomic: every rank saves into `.tmp-stepN`; once all ranks' files exist rank 0 writes trainer_state.json and
checksums.json (sha256 of every file: pretrain/checkpoint_integrity.py), renames the folder and only then
points `latest` at it, so a killed job never leaves a `latest` that names a half-written checkpoint (the
run dir is on a file system all nodes share, as usual under slurm). A resume verifies the checksums and
passes over a damaged latest for the newest intact checkpoint, with a warning naming the bad file.
Failed save: a write error on any rank (disk full: ENOSPC, quota, I/O error) is shared by all ranks (the
gather that replaces the barrier), the `.tmp-` folder is removed, `latest` still names the previous
checkpoint, and save raises CheckpointSaveFailed: run.py prints its message (the rank, the error, the
previous checkpoint) and exits with EXIT_SAVE_FAILED (74).
Preemption: a signal only sets a flag; all ranks agree on it after the step (one all-reduce) and save
together, then exit with EXIT_PREEMPTED so the launcher/slurm requeues the job; the requeued job
auto-resumes from `latest`.
"""
import json
import os
import random
import shutil
import signal
import sys
import time
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist

from clipforge.atomic import fsync_folder, fsync_tree, write_atomic
from clipforge.errors import UserError, UserFileNotFound
from clipforge.pretrain import elastic
from clipforge.pretrain.checkpoint_integrity import newest_intact, problem, write_checksums
from clipforge.pretrain.rundir import CONSOLIDATED, saved_world_size

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint written after SIGTERM/SIGUSR1; requeue and resume
EXIT_NONFINITE = 3  # too many consecutive non-finite steps; resume from the named checkpoint with a lower lr
EXIT_SAVE_FAILED = 74  # EX_IOERR: a checkpoint could not be written; the previous one is intact
LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


class PreemptionFlag:
    """SIGTERM / SIGUSR1 -> flag (handlers only set it: checkpointing inside a handler would race the step)."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.signum: Optional[int] = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum


def rng_state() -> dict:
    state = {"python": _jsonable(random.getstate()), "numpy": _jsonable(np.random.get_state()),
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _write_json(path: str, obj) -> None:
    write_atomic(path, json.dumps(obj))


class CheckpointSaveFailed(Exception):
    """A checkpoint could not be written on some rank; `latest` still names the previous one."""


class CheckpointDamaged(UserError):
    """checkpoint.resume names a checkpoint that is truncated or fails its checksums."""


def _gather_errors(error: Optional[str]) -> list:
    """Every rank's write error (None: fine); also the barrier of the save protocol."""
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return [e for e in errors if e is not None]


class CheckpointManager:
    def __init__(self, run_dir: str, every_steps: int, every_minutes: float, keep_last: int, rank: int):
        self.dir = os.path.join(run_dir, "checkpoints")
        self.every_steps, self.every_s, self.keep_last, self.rank = every_steps, every_minutes * 60, keep_last, rank
        self.last_save = time.monotonic()
        self.last_tag: Optional[str] = None
        # name -> this rank's state (e.g. the model EMA's fragments), saved as <tag>/<name>/rank<r>.pt
        self.per_rank: Dict[str, Callable[[], dict]] = {}
        # () -> the run's consolidated state on rank 0 (None elsewhere; every rank calls it: collectives),
        # saved as <tag>/consolidated.pt (pretrain/elastic.py); None: not written (ZeRO-0, checkpoint.elastic off)
        self.consolidate: Optional[Callable[[], Optional[dict]]] = None
        # the consolidated state the last load() read, when it resumed on another world size; else None
        self.resized_from: Optional[dict] = None

    def due(self, step: int) -> bool:
        """Rank 0's clock decides (ranks' clocks differ; the caller all-reduces this flag)."""
        by_steps = self.every_steps > 0 and step % self.every_steps == 0
        by_time = self.rank == 0 and self.every_s > 0 and time.monotonic() - self.last_save >= self.every_s
        return by_steps or by_time

    def latest_tag(self) -> Optional[str]:
        marker = os.path.join(self.dir, LATEST)
        if not os.path.isfile(marker):
            return None
        with open(marker) as f:
            return f.read().strip()

    def _on_rank0(self, fn):
        """fn() on rank 0 only (it reads the whole checkpoint once), its answer broadcast to every rank."""
        box = [fn() if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def intact_latest(self) -> Optional[str]:
        """The newest checkpoint that passes its checksums, starting at `latest`; each one passed over is a
        warning on stderr naming its bad file. None: no checkpoint (or none intact)."""
        def find():
            path, warnings, cost = newest_intact(self.dir, self.latest_tag())
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
            if path is not None:
                print(f"checkpoint {os.path.basename(path)} verified: {cost}", file=sys.stderr)
            return path
        return self._on_rank0(find)

    def check_intact(self, path: str) -> None:
        """An explicitly named checkpoint is refused, not replaced, when it is damaged."""
        bad = self._on_rank0(lambda: problem(os.path.abspath(path.rstrip("/"))))
        if bad is not None:
            raise CheckpointDamaged(f"checkpoint.resume={path}: {bad}; give an intact checkpoint "
                                    f"(an older RUN/checkpoints/stepN) or latest")

    def _write_own_files(self, engine, tmp_tag: str, consolidated: Optional[dict]) -> Optional[str]:
        """This rank's share of the checkpoint (rank 0: also the consolidated state); -> its write error, if
        any. torch.save reports a full disk as a RuntimeError ("PytorchStreamWriter failed writing file"),
        plain writes as OSError."""
        try:
            engine.save_checkpoint(self.dir, tag=tmp_tag, save_latest=False)
        except (OSError, RuntimeError) as err:
            dist.barrier()  # DeepSpeed's save ends with a barrier, which this rank's failed write skipped
            return f"rank {self.rank}: {err}"
        tmp_dir = os.path.join(self.dir, tmp_tag)
        try:
            os.makedirs(os.path.join(tmp_dir, "rng"), exist_ok=True)
            _write_json(os.path.join(tmp_dir, "rng", f"rank{self.rank}.json"), rng_state())
            for name, state in self.per_rank.items():
                os.makedirs(os.path.join(tmp_dir, name), exist_ok=True)
                torch.save(state(), os.path.join(tmp_dir, name, f"rank{self.rank}.pt"))
            if consolidated is not None:
                torch.save(consolidated, os.path.join(tmp_dir, CONSOLIDATED))
        except (OSError, RuntimeError) as err:
            return f"rank {self.rank}: {err}"
        return None

    def _commit(self, tmp_dir: str, tag: str, trainer_state: dict) -> Optional[str]:
        """Rank 0, once every rank's files exist: state, checksums, rename, `latest`; -> its write error."""
        try:
            _write_json(os.path.join(tmp_dir, "trainer_state.json"), trainer_state)
            write_checksums(tmp_dir)
            final = os.path.join(self.dir, tag)
            if os.path.isdir(final):
                shutil.rmtree(final)
            # every rank's files (written there, on a shared file system, before the barrier) reach the disk
            # before the rename publishes them, and the rename itself before `latest` names the folder
            fsync_tree(tmp_dir)
            os.replace(tmp_dir, final)
            fsync_folder(self.dir)
            write_atomic(os.path.join(self.dir, LATEST), tag)
        except OSError as err:
            return f"rank 0: {err}"
        self._prune()
        return None

    def _abort_if_failed(self, errors: list, tmp_dir: str, tag: str) -> None:
        if not errors:
            return
        if self.rank == 0:
            shutil.rmtree(tmp_dir, ignore_errors=True)  # frees what the partial save took
        raise CheckpointSaveFailed(
            f"checkpoint {tag} could not be written ({'; '.join(errors)}); it was removed and "
            f"{os.path.join(self.dir, LATEST)} still names the previous checkpoint "
            f"({self.last_tag or 'none'}), which is intact: free space in {self.dir} "
            f"({shutil.disk_usage(self.dir).free / 1e9:.2f} GB free now) and resume")

    def save(self, engine, trainer_state: dict) -> str:
        """All ranks call it; raises CheckpointSaveFailed on every rank when a write failed on any."""
        tag = tag_for(trainer_state["step"])
        tmp_tag = f".tmp-{tag}"
        tmp_dir = os.path.join(self.dir, tmp_tag)
        # Gathered before any file is written: a rank whose write fails must not skip a collective.
        consolidated = self.consolidate() if self.consolidate is not None else None
        self._abort_if_failed(_gather_errors(self._write_own_files(engine, tmp_tag, consolidated)), tmp_dir, tag)
        error = self._commit(tmp_dir, tag, trainer_state) if self.rank == 0 else None
        self._abort_if_failed(_gather_errors(error), tmp_dir, tag)
        self.last_save, self.last_tag = time.monotonic(), tag
        return os.path.join(self.dir, tag)

    def _prune(self) -> None:
        tags = sorted(t for t in os.listdir(self.dir) if t.startswith("step") and os.path.isdir(os.path.join(self.dir, t)))
        for old in tags[:-self.keep_last] if self.keep_last > 0 else []:
            shutil.rmtree(os.path.join(self.dir, old), ignore_errors=True)

    def load(self, engine, path: str) -> dict:
        """Restores model + optimizer into the engine, this rank's RNG; returns trainer_state. A checkpoint of
        another world size loads from its consolidated state (self.resized_from)."""
        path = os.path.abspath(path.rstrip("/"))
        state_file = os.path.join(path, "trainer_state.json")
        if not os.path.isfile(state_file):
            raise UserFileNotFound(f"{path}: not a clipforge checkpoint (no trainer_state.json); "
                                    f"give a folder under RUN/checkpoints/ or --resume latest")
        load_dir, tag = os.path.dirname(path), os.path.basename(path)
        saved_world = saved_world_size(path)
        self.resized_from = None
        if saved_world not in (None, dist.get_world_size()) and os.path.isfile(os.path.join(path, CONSOLIDATED)):
            self.resized_from = elastic.load(engine, path)
            if self.rank == 0:
                print(f"{path}: saved by {saved_world} rank(s), resumed on {dist.get_world_size()} from its "
                      f"consolidated state", file=sys.stderr)
        else:
            loaded, _ = engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True,
                                               load_lr_scheduler_states=False)
            if loaded is None:
                raise RuntimeError(f"{path}: DeepSpeed could not load this checkpoint (see the log above)")
        with open(state_file) as f:
            trainer_state = json.load(f)
        rng_file = os.path.join(path, "rng", f"rank{self.rank}.json")
        if os.path.isfile(rng_file):  # absent when resuming with more ranks than were saved
            with open(rng_file) as f:
                set_rng_state(json.load(f))
        self.last_tag = tag
        return trainer_state

    def restore_ema(self, ema, path: str) -> bool:
        """The model EMA saved with the checkpoint that load() just read from `path` -> `ema` (ModelEMA);
        False when it was saved without one."""
        if self.resized_from is not None:  # another world size: this rank's fragments come from the whole EMA
            if self.resized_from["ema"] is None:
                return False
            ema.load_full_state(self.resized_from["ema"])
            return True
        saved = self.load_per_rank(path, "ema")
        if saved is not None:
            ema.load_state_dict(saved)
        return saved is not None

    def load_per_rank(self, path: str, name: str) -> Optional[dict]:
        """This rank's saved `name` state of the checkpoint at `path` (None when it was saved without)."""
        file = os.path.join(os.path.abspath(path.rstrip("/")), name, f"rank{self.rank}.pt")
        return torch.load(file, map_location="cpu", weights_only=True) if os.path.isfile(file) else None
