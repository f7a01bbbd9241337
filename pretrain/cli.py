"""`clipforge pretrain` / `python -m pretrain`: train one rank (run under torchrun or srun; alone it is a
world of one). Exit codes: 0 done, 2 bad config, 3 too many non-finite steps, 75 preempted (a
checkpoint was written after SIGTERM/SIGUSR1: requeue the job and it resumes from `latest`)."""
import argparse
import sys

from pretrain.config import ConfigError, load_config

EPILOG = """examples:
  torchrun --standalone --nproc_per_node=2 -m pretrain --config configs/demo-cpu.yaml deepspeed.zero_stage=3
  clipforge pretrain --config configs/demo-cpu.yaml --resume latest train.steps=200 optim.lr=1e-4

The run dir (train.run_dir) gets config.yaml, deepspeed.json, checkpoints/, tensorboard/, metrics.jsonl,
loss.png, model.pt and export/ (an open_clip local-dir). Without --resume a run dir that already has a
checkpoint resumes from its latest one (so a requeued job continues).
exit codes: 0 done, 2 config error, 3 too many consecutive non-finite steps, 75 preempted (checkpointed)."""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="clipforge pretrain", description=__doc__.split("\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config YAML (see configs/)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder RUN/checkpoints/stepNNNNNNNN")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.lr=1e-4")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"clipforge pretrain: {err}", file=sys.stderr)
        return 2
    from pretrain.run import run  # torch/deepspeed only after the config is known to be good

    try:
        return run(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"clipforge pretrain: {err}", file=sys.stderr)
        return 2
