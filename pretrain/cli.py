"""`clipforge pretrain` / `python -m clipforge.pretrain`: train one rank (run under torchrun or srun; alone it is a
world of one). Exit codes: 0 done, 2 bad config, 3 too many non-finite steps, 75 preempted (a
checkpoint was written after SIGTERM/SIGUSR1: requeue the job and it resumes from `latest`)."""
import argparse
import os
import sys
from typing import List, Optional

from clipforge.errors import UserError
from clipforge.modeling.config import load_config
from clipforge.modeling.config_checks import check_decode_device
from clipforge.pretrain.evaluator import resolve_evaluator
from clipforge.pretrain.preflight import preflight, unknown_flag_message
from clipforge.pretrain.rundir import already_done, check_resume, describe, finished, run_info, target_steps

EPILOG = """examples:
  clipforge pretrain --config configs/demo-cpu.yaml train.run_dir=runs/zero3 deepspeed.zero_stage=3 train.steps=50
  torchrun --standalone --nproc_per_node=2 -m clipforge.pretrain --config configs/demo-cpu.yaml train.steps=50
  clipforge pretrain --config configs/demo-cpu.yaml --resume latest train.steps=200 optim.lr=1e-4

A run-length override (train.steps, train.samples or train.epochs) replaces the config file's run length.
The run dir (train.run_dir) gets config.yaml (with the clipforge version, git commit and overrides),
deepspeed.json, checkpoints/, tensorboard/, metrics.jsonl, loss.png, model.pt and export/ (an open_clip
local-dir). Without --resume a run dir that already has a checkpoint resumes from its latest one (so a
requeued job continues): only with the same model, data, batch, seed, ZeRO stage, precision and world
size (anything else is refused: give a new train.run_dir); a longer run, another lr or eval cadence are fine.
exit codes: 0 done, 2 config error, 3 too many consecutive non-finite steps, 75 preempted (checkpointed)."""

# Set by `python -m clipforge.pretrain.torchrun` (what `clipforge launch local` runs): a rank writes its user error
# there instead of printing it, and the launcher prints it once instead of torchrun's failure dump.
ERRORS_ENV = "CLIPFORGE_RANK_ERRORS"


def parse_args(argv: List[str]):
    parser = argparse.ArgumentParser(prog="clipforge pretrain", description=__doc__,
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config YAML (see configs/)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder RUN/checkpoints/stepNNNNNNNN")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.lr=1e-4")
    args, extras = parser.parse_known_intermixed_args(argv)
    message = unknown_flag_message(extras, argv)
    if message or extras:
        parser.exit(2, f"clipforge pretrain: {message or 'unexpected arguments ' + ' '.join(extras)}\n")
    return args


def report_error(message: str, code: int = 2) -> int:
    """One line on stderr, or into the launcher's error folder (it prints one line for all ranks)."""
    folder = os.environ.get(ERRORS_ENV)
    line = f"clipforge pretrain: {message}"
    if folder and os.path.isdir(folder):
        with open(os.path.join(folder, f"rank{os.environ.get('RANK', '0')}.txt"), "w") as f:
            f.write(f"{code}\n{line}\n")
    else:
        print(line, file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    try:
        cfg = load_config(args.config, overrides)
        preflight(cfg)
        point = check_resume(cfg, world)
    except UserError as err:
        return report_error(str(err))
    if finished(point, cfg):   # a finished run asked for no more steps: no retraining, no re-export
        if rank == 0:
            print(f"clipforge pretrain: {already_done(point.step, target_steps(cfg))}", file=sys.stderr)
        return 0
    if rank == 0 and point is not None:
        print(f"clipforge pretrain: {describe(point, cfg)}", file=sys.stderr)
    from clipforge.pretrain.run import run  # torch/deepspeed only after the config is known to be good
    import torch

    try:
        check_decode_device(cfg, torch.cuda.is_available())  # data.decode=gpu: before the process group and DeepSpeed
        # the periodic eval the config names (eval.evaluator), handed down: pretrain imports no eval itself
        evaluator = resolve_evaluator(cfg.eval.evaluator)
        return run(cfg, run_info=run_info(overrides, world), evaluator=evaluator)
    except UserError as err:  # anything else is a bug: its traceback, exit 1
        return report_error(str(err))
