"""`clipforge eval`: zero-shot retrieval / classification / linear probe of any checkpoint, or a suite of them;
CLIP_benchmark-compatible JSON. --task clip_score: every sample's CLIP score and image embedding, a parquet for
`clipforge curate`."""
import argparse
import contextlib
import io
import logging
import os
import sys
from typing import List, Optional

import torch

from clipforge.dataclass_cli import add_fields, field_values
from clipforge.eval.task_options import ProbeConfig, ProbeDataOptions, TaskOptions
from clipforge.modeling.eval_options import EvalOptions

EXAMPLES = """examples:
  # on what `clipforge demo` leaves in runs/demo/ (run/, shards-val/, raw/):
  clipforge eval --model runs/demo/run --data runs/demo/shards-val --task retrieval --out runs/demo/eval-val.json
  clipforge eval --model runs/demo/run --data runs/demo/shards-val --task classification --label-key shape \\
                 --classnames runs/demo/raw/classnames.txt --templates simple --report runs/demo/cls.html
  clipforge eval --model runs/demo/run/checkpoints --data runs/demo/raw --task retrieval   # raw folder: converted first
  clipforge eval --model runs/demo/run --all-checkpoints --data runs/demo/shards-val --task retrieval  # a curve
  clipforge eval --model runs/demo/run --all-checkpoints   # the trainer's own periodic eval, drawn
  clipforge eval --model model.pt --model-config configs/models/tiny-vit.json --data shards/ --task retrieval
  clipforge eval --model ViT-B-32 --pretrained weights.pt --data shards/ --task retrieval
  torchrun --nproc_per_node 8 -m clipforge.eval --model RUN --data shards/ --task retrieval   # every rank embeds a share
  # CLIP scores for curation (a parquet: key, clip_score, embedding), then keep the best-scoring half
  clipforge eval --model runs/demo/run --data runs/demo/shards-train --task clip_score --out clip_scores.parquet \
    && clipforge curate runs/demo/shards-train --out top50/ --scores clip_scores.parquet --top-fraction 0.5

CLIP_benchmark spellings also accepted: --task zeroshot_retrieval|zeroshot_classification, --recall_k 1 5 10,
--output FILE, --dataset_root DIR, --batch_size N, --num_workers N.

--task clip_score writes, per sample, DataComp's CLIP score (cosine of the image's and its first caption's
embeddings) and the image embedding: `clipforge curate --scores` / `--embeddings` read it (docs/convert.md).
--task linear_probe trains a logistic regression on --train-data (default: --data's train split) with
CLIP_benchmark's weight-decay sweep; --suite FILE runs a list of tasks for one or more --model (configs/eval/).
--data also reads CLIP_benchmark's published webdataset dirs and ImageFolder dirs as they are (docs/eval.md).

--model: a run dir (export/, else model.pt, else the latest DeepSpeed checkpoint), local-dir:DIR or an export
dir, a DeepSpeed checkpoint dir (any ZeRO stage, consolidated on the fly) or one tag in it, a model.pt
(+ --model-config), or an open_clip model name + --pretrained FILE.
"""


# CLIP_benchmark's names for the same things.
TASKS = {"retrieval": "zeroshot_retrieval", "classification": "zeroshot_classification",
         "linear_probe": "linear_probe", "clip_score": "clip_score"}
PEER_FLAGS = {"--recall_k": "recall_k", "--output": "out", "--dataset_root": "data", "--batch_size": "batch_size",
              "--num_workers": "workers", "--train_split": "train_split", "--val_split": "val_split",
              "--val_proportion": "val_proportion", "--fewshot_k": "fewshot_k", "--fewshot_lr": "lr",
              "--fewshot_epochs": "epochs", "--feature_root": "feature_cache"}


def parse_args(argv: List[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="clipforge eval", description=__doc__, epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, action="append", help="what to evaluate (see below); "
                    "repeat it with --suite to compare models side by side")
    ap.add_argument("--suite", help="a suite YAML (see configs/eval/): every task in it, one JSON each, a summary")
    ap.add_argument("--out-dir", help="--suite: where the JSONs and summary go (default: the suite's out_dir); "
                    "--all-checkpoints: where the curve goes (default RUN/eval/curve)")
    ap.add_argument("--all-checkpoints", action="store_true",
                    help="--model RUN: evaluate every kept checkpoint (with --data/--task), or without --data draw "
                         "the trainer's periodic eval; -> curve.csv + curve.png")
    ap.add_argument("--data-root", help="--suite: folder its relative data paths start from (default: the "
                    "suite's root, else the current dir)")
    ap.add_argument("--data", help="shard dataset dir / .tar / brace pattern, CLIP_benchmark webdataset dir "
                    "(DIR/test/*.tar + nshards.txt ...), ImageFolder dir (DIR[/split]/<class>/*.jpg), or a raw "
                    "folder / caption file (COCO, Flickr, csv ...) converted into a temp dir first")
    ap.add_argument("--task", choices=tuple(TASKS) + tuple(TASKS.values()),
                    help="retrieval, classification, linear_probe (CLIP_benchmark's zeroshot_* names too) or "
                         "clip_score (per-sample scores for `clipforge curate`)")
    ap.add_argument("--out", help="write the CLIP_benchmark-style JSON here (--task clip_score: the parquet)")
    ap.add_argument("--model-config", help="model name or model-config JSON for weights without one")
    ap.add_argument("--pretrained", help="local weights file for an open_clip model name")
    add_fields(ap, EvalOptions)  # --recall-k, --batch-size, --workers: the periodic eval's eval.* keys too
    add_fields(ap, TaskOptions)  # --split, --label-key, --classnames, --templates: a suite entry's keys too
    probe = ap.add_argument_group("linear probe (CLIP_benchmark's procedure; see docs/eval.md)")
    add_fields(probe, ProbeDataOptions)
    add_fields(probe, ProbeConfig)
    probe.add_argument("--feature-cache", help="cache features here (default: features/ beside --out)")
    ap.add_argument("--convert-dir", help="raw --data: convert into this dir and keep it (default: a temp dir, "
                    "removed at the end)")
    ap.add_argument("--dataset-name", help="the JSON's 'dataset' (default: the --data folder's name)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                    help="auto: fp32 on CPU, fp16 autocast on GPU (CLIP_benchmark's default)")
    ap.add_argument("--report", help="also write example retrievals with thumbnails (.md or .html)")
    ap.add_argument("--report-examples", type=int, default=8, help="queries shown in the report")
    ap.add_argument("--quiet", action="store_true", help="no progress lines, no DeepSpeed consolidation lines")
    for flag, dest in PEER_FLAGS.items():  # CLIP_benchmark's spellings, listed in the epilog
        like = next(a for a in ap._actions if a.dest == dest)
        ap.add_argument(flag, dest=dest, nargs=like.nargs, type=like.type, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.suite:
        return args
    if len(args.model) > 1:
        ap.error("several --model need --suite (one task compares one model)")
    args.model = args.model[0]
    if args.all_checkpoints and not os.path.isdir(os.path.join(args.model, "checkpoints")) \
            and not os.path.isdir(os.path.join(args.model, "eval")):
        ap.error(f"--all-checkpoints: --model {args.model} is not a run dir (no checkpoints/ or eval/ in it)")
    if args.all_checkpoints and not args.data and not args.task:
        return args  # the trainer's periodic eval, drawn
    if not args.data:
        ap.error("give --data DIR (or CLIP_benchmark's --dataset_root DIR): the shards or raw data to evaluate")
    if not args.task:
        ap.error("give --task retrieval|classification|linear_probe (or --suite FILE)")
    args.task = {v: k for k, v in TASKS.items()}.get(args.task, args.task)
    if args.task == "clip_score" and (not args.out or args.report or args.all_checkpoints):
        ap.error("--task clip_score writes one parquet: give --out FILE.parquet (no --report, --all-checkpoints)")
    if args.report and args.task == "linear_probe":
        ap.error("--report shows example queries of retrieval / classification; a linear probe has none")
    try:
        args.recall_k = sorted({int(k) for part in args.recall_k for k in str(part).split(",") if k.strip()})
    except ValueError:
        ap.error(f"--recall-k {' '.join(map(str, args.recall_k))}: give integers, e.g. 1,5,10 or 1 5 10")
    if not args.recall_k or args.recall_k[0] < 1:
        ap.error("--recall-k values must be >= 1")
    if args.batch_size < 1:
        ap.error("--batch-size must be >= 1")
    return args


@contextlib.contextmanager
def _quiet(enabled: bool):
    """--quiet: DeepSpeed's checkpoint consolidation prints (stdout), logs (its own logger) and shows a progress
    bar (stderr); errors still surface as exceptions."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("DeepSpeed")
    level, buffer = logger.level, io.StringIO()
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        logger.setLevel(level)
        # DeepSpeed's handler binds sys.stdout when it is first imported: inside this block that is the buffer.
        for handler in logger.handlers:
            if getattr(handler, "stream", None) is buffer:
                handler.setStream(sys.stdout)


def runtime(args, device_flag: str):
    """The device / precision / batch settings every task of this process shares."""
    from clipforge.eval.distributed import rank_world
    from clipforge.eval.tasks import Runtime
    device = "cuda" if device_flag == "auto" and torch.cuda.is_available() else \
        ("cpu" if device_flag == "auto" else device_flag)
    if device == "cuda" and rank_world()[1] > 1:
        device = f"cuda:{torch.cuda.current_device()}"
    precision = args.precision if args.precision != "auto" else ("fp32" if device == "cpu" else "fp16")
    return Runtime(device=device, precision=precision, batch_size=args.batch_size, workers=args.workers,
                   progress=not args.quiet, convert_dir=args.convert_dir)


def task_spec(args):
    from clipforge.eval.tasks import TaskSpec
    probe = ProbeConfig(**field_values(args, ProbeConfig), batch_size=args.batch_size)
    return TaskSpec(task=args.task, data=args.data, name=args.dataset_name, recall_k=args.recall_k, probe=probe,
                    **field_values(args, TaskOptions), **field_values(args, ProbeDataOptions))


def _clip_score(args, rt) -> int:
    """--task clip_score: the parquet `clipforge curate --scores / --embeddings` reads, written by rank 0."""
    from clipforge.eval.clip_score import clip_scores, write_scores
    from clipforge.eval.distributed import rank_world
    from clipforge.modeling.load_model import load_model
    from clipforge.eval.tasks import open_data
    with _quiet(args.quiet):
        loaded = load_model(args.model, args.model_config, args.pretrained)
    loaded.model.to(rt.device)
    source = open_data(args.data, args.split, False, args.dataset_name, loaded, rt)
    scored = clip_scores(loaded.model, loaded.tokenizer, loaded.transform, source.data, rt.batch_size, rt.device,
                         rt.precision, rt.workers, rt.progress)
    if rank_world()[0] == 0:
        write_scores(args.out, scored, {"model": loaded.name, "pretrained": loaded.pretrained, "data": args.data,
                                        "precision": rt.precision})
        skipped = ", ".join(f"{n} {reason} (e.g. {scored.skipped_examples[reason]})"
                            for reason, n in scored.skipped.items())
        print(f"clipforge eval: clip_score of {len(scored.keys)} samples of {source.name} with {loaded.name} "
              f"({rt.precision}, {rank_world()[1]} rank(s)); mean {scored.scores.mean():.4f}"
              + (f"; no row for {skipped}: curate needs one per sample" if skipped else ""))
        print(f"wrote {args.out}")
    return 0


def _run(args) -> int:
    from clipforge.eval import report
    from clipforge.eval.distributed import comm_for_world, init_from_env, rank_world
    from clipforge.modeling.load_model import load_model
    from clipforge.eval.tasks import cleanup, run_task

    from clipforge.eval.curve import run_curve

    init_from_env()
    rank, world = rank_world()
    rt = runtime(args, args.device)
    # one feature cache per model: several checkpoints would share it, so a curve caches nothing
    rt.feature_cache = None if args.all_checkpoints else args.feature_cache or (
        os.path.join(os.path.dirname(os.path.abspath(args.out)), "features") if args.out else None)

    def evaluate_one(spec: str, out: Optional[str]) -> dict:
        with _quiet(args.quiet):
            loaded = load_model(spec, args.model_config, args.pretrained)
        loaded.model.to(rt.device)
        run, source, extra = run_task(task_spec(args), loaded, rt)
        ex = report.examples(run, comm_for_world(), args.report_examples, 5) \
            if args.report and run.task != "linear_probe" else None
        if rank == 0:
            print(report.table(run, f"clipforge eval: {run.task} of {loaded.name} on {source.name} "
                                    f"({rt.precision}, {world} rank(s))"))
            extra.update(precision=rt.precision, world_size=world)
            if out:
                report.write_json(out, report.result_json(run, source.name, loaded.name, loaded.pretrained, extra))
                print(f"wrote {out}")
            if ex is not None:
                report.write_report(args.report, run, ex, source.data, f"{run.task}: {loaded.name} on {source.name}")
                print(f"wrote {args.report}")
        return run.metrics

    try:
        if args.task == "clip_score":
            return _clip_score(args, rt)
        if args.all_checkpoints:
            return run_curve(args, evaluate_one)
        evaluate_one(args.model, args.out)
        return 0
    finally:
        cleanup(rt)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    from clipforge.errors import UserError
    try:
        if args.suite:
            from clipforge.eval.suite import run_suite_cli
            return run_suite_cli(args)
        return _run(args)
    except UserError as e:  # anything else is a bug: its traceback, exit 1
        print(f"clipforge eval: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
