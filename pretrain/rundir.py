"""Reusing a run dir: what a new start of `pretrain` does with the checkpoint already there.

Torch-free: `clipforge launch` decides before torchrun / sbatch (it knows the world size: nproc x
nodes), `clipforge pretrain` again before DeepSpeed is imported. A checkpoint resumes only into the
run that wrote it, so the new resolved config is compared with the run's saved config.yaml:
- changes that break resume (model, loss, batch, data, seed, ZeRO stage, precision; world size under
  ZeRO >= 1 when the checkpoint has no consolidated state) are refused with one line naming them and what to do;
- safe ones (run length, lr and schedule, eval / log / checkpoint cadence, loader workers) are
  allowed and listed, so the log says what changed;
- a run already at (or past) its requested length does nothing ("already at step N").
"""
import importlib.metadata
import json
import math
import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from clipforge.modeling.config import RUN_INFO_KEY, ConfigError, RunConfig, load_config

# Dotted keys (or prefixes ending in ".") that may differ between a run and its resumption.
SAFE_CHANGES = ("train.steps", "train.samples", "train.epochs", "train.log_every", "train.max_nonfinite_steps",
                "train.spike_factor", "train.spike_window", "train.max_rollbacks", "train.skip_batches_after_rollback",
                "train.run_dir", "train.device", "train.compile", "optim.", "eval.", "checkpoint.", "data.workers",
                "data.prefetch", "data.decode",  # decode: the same samples and crops (device_decode.py)
                "data.val_path", "model.grad_checkpointing", "model.text_cache", "model.ema_decay",
                "loss.distill.stored")  # a stored teacher gives the live one's numbers (pretrain/distill.py)
# optim.* may change, but switching a tower's layer-wise lr decay on or off regroups its parameters (one
# optimizer group per layer, pretrain/param_groups.py): the checkpoint's optimizer state no longer fits.
LAYER_DECAY_KEYS = ("optim.layer_decay", "optim.layer_decay_image", "optim.layer_decay_text")
# DeepSpeed names one optimizer-state file per data-parallel rank (bf16_ prefix for its bf16 optimizer).
_RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")
# The run's consolidated state in a ZeRO >= 1 checkpoint: it resumes on any world size (pretrain/elastic.py).
CONSOLIDATED = "consolidated.pt"


@dataclass
class ResumePoint:
    path: str                         # the checkpoint folder
    step: int
    saved_world: Optional[int]        # ranks that wrote it (None: not partitioned, any world size loads it)
    changes: List[str] = field(default_factory=list)   # safe changes, "optim.lr 0.001 -> 0.0001"


def clipforge_version() -> str:
    try:
        return importlib.metadata.version("clipforge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def git_commit() -> Optional[str]:
    """The commit of the clipforge checkout in use (+ '-dirty' with local changes); None outside git."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def run_info(overrides: Sequence[str], world_size: int) -> dict:
    """What config.yaml records besides the config: how the run was started."""
    return {"clipforge_version": clipforge_version(), "git_commit": git_commit(),
            "overrides": list(overrides), "world_size": world_size}


def _checkpoint_path(cfg: RunConfig) -> Optional[str]:
    """The checkpoint a start would load: checkpoint.resume's, else the run dir's latest (or None)."""
    resume = cfg.checkpoint.resume
    if resume not in (None, "latest"):
        if not os.path.isfile(os.path.join(resume, "trainer_state.json")):
            raise ConfigError(f"checkpoint.resume={resume!r}: not a clipforge checkpoint folder "
                              "(give RUN/checkpoints/stepNNNNNNNN or latest)")
        return os.path.abspath(resume.rstrip("/"))
    checkpoints = os.path.join(cfg.train.run_dir, "checkpoints")
    try:
        with open(os.path.join(checkpoints, "latest")) as f:
            path = os.path.join(checkpoints, f.read().strip())
    except OSError:
        return None
    return path if os.path.isfile(os.path.join(path, "trainer_state.json")) else None


def _flat(cfg: RunConfig) -> Dict[str, object]:
    container = OmegaConf.to_container(OmegaConf.structured(cfg))

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], node
    return dict(walk(container, ""))


PATH_KEYS = ("model.name", "model.hf_text_dir", "data.val_path")


def _resolved(key: str, value):
    """Paths compared as the files they name: the demo saves absolute paths, its config file has relative
    ones, and both mean the same run."""
    real = lambda p: os.path.realpath(p) if isinstance(p, str) and os.path.exists(p) else p  # noqa: E731
    if key in PATH_KEYS:
        return real(value)
    if key == "data.sources" and isinstance(value, list):
        return [dict(s, path=real(s.get("path"))) if isinstance(s, dict) else s for s in value]
    return value


def _safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_CHANGES)


def _regrouped(old: dict, new: dict) -> List[str]:
    """The layer-decay keys that changed, when their change switches a tower's decay on or off; else []
    (another decay value only moves the base lrs, which the schedule sets every step)."""
    def on(flat: dict, tower: str) -> bool:
        return flat.get(f"optim.layer_decay_{tower}") is not None or flat.get("optim.layer_decay") is not None
    if all(on(old, tower) == on(new, tower) for tower in ("image", "text")):
        return []
    return [k for k in LAYER_DECAY_KEYS if old.get(k) != new.get(k)]


def saved_world_size(path: str) -> Optional[int]:
    """The ranks that wrote the checkpoint at `path` (None: ZeRO-0, not partitioned)."""
    ranks = {int(m.group(1)) for name in os.listdir(path) for m in [_RANK_FILE.search(name)] if m}
    return len(ranks) or None


def target_steps(cfg: RunConfig) -> Optional[int]:
    """The run's length in steps when the config alone says it (epochs need the loader's plan)."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    if cfg.train.samples is not None:
        return math.ceil(cfg.train.samples / cfg.train.global_batch_size)
    return None


def check_resume(cfg: RunConfig, world_size: int) -> Optional[ResumePoint]:
    """None: a fresh start. Else where the run resumes and which safe changes it brings; a change
    that breaks resume raises ConfigError (one line)."""
    path = _checkpoint_path(cfg)
    if path is None:
        return None
    with open(os.path.join(path, "trainer_state.json")) as f:
        step = int(json.load(f)["step"])
    point = ResumePoint(path=path, step=step, saved_world=saved_world_size(path))
    where = f"{path} (step {step})"
    saved_file = os.path.join(os.path.dirname(os.path.dirname(path)), "config.yaml")
    if os.path.isfile(saved_file):
        old, new = _flat(load_config(saved_file)), _flat(cfg)
        differ = [k for k in new if _resolved(k, old.get(k)) != _resolved(k, new[k])]
        breaking = [k for k in differ if not _safe(k)] + _regrouped(old, new)
        if breaking:
            what = ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in breaking)
            raise ConfigError(f"cannot resume {where} with a changed {what}: give a new train.run_dir "
                              f"to start another run, or keep the saved values ({saved_file})")
        point.changes = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in differ if k != "train.run_dir"]
    # a finished run loads nothing: "already at step N" is the answer whatever the world size
    # another world size loads the checkpoint's consolidated state (pretrain/elastic.py), when it has one
    if cfg.deepspeed.zero_stage >= 1 and point.saved_world not in (None, world_size) and not finished(point, cfg) \
            and not os.path.isfile(os.path.join(path, CONSOLIDATED)):
        raise ConfigError(f"cannot resume {where} on {world_size} rank(s): it was saved by {point.saved_world} "
                          f"(deepspeed.zero_stage={cfg.deepspeed.zero_stage} partitions the optimizer over the "
                          f"ranks) without a consolidated state (checkpoint.elastic); launch "
                          f"{point.saved_world} ranks, or give a new train.run_dir")
    return point


def describe(point: Optional[ResumePoint], cfg: RunConfig) -> str:
    """One line for --dry-run and the start of a run: fresh, resume from step N (with what changed), or done."""
    if point is None:
        return f"will start a new run in {cfg.train.run_dir}"
    target = target_steps(cfg)
    if target is not None and point.step >= target:
        return already_done(point.step, target)
    changes = f"; changed: {', '.join(point.changes)}" if point.changes else ""
    return f"will resume from step {point.step} ({point.path}){changes}"


def already_done(step: int, target: int) -> str:
    return (f"already at step {step} (the run asks for {target}): nothing to do; raise train.steps to train "
            "longer, or give a new train.run_dir for a new run")


def finished(point: Optional[ResumePoint], cfg: RunConfig) -> bool:
    target = target_steps(cfg)
    return point is not None and target is not None and point.step >= target
