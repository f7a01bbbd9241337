"""`clipforge eval`: zero-shot retrieval / classification of any checkpoint, CLIP_benchmark-compatible JSON."""
import argparse
import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
from typing import List, Optional

import torch

EXAMPLES = """examples:
  # on what `clipforge demo` leaves in runs/demo/ (run/, shards-val/, raw/):
  clipforge eval --model runs/demo/run --data runs/demo/shards-val --task retrieval --out runs/demo/eval-val.json
  clipforge eval --model runs/demo/run --data runs/demo/shards-val --task classification --label-key shape \\
                 --classnames runs/demo/raw/classnames.txt --templates simple --report runs/demo/cls.html
  clipforge eval --model runs/demo/run/checkpoints --data runs/demo/raw --task retrieval   # raw folder: converted first
  clipforge eval --model model.pt --model-config configs/models/tiny-vit.json --data shards/ --task retrieval
  clipforge eval --model ViT-B-32 --pretrained weights.pt --data shards/ --task retrieval
  torchrun --nproc_per_node 8 -m eval --model RUN --data shards/ --task retrieval   # every rank embeds a share

CLIP_benchmark spellings also accepted: --task zeroshot_retrieval|zeroshot_classification, --recall_k 1 5 10,
--output FILE, --dataset_root DIR, --batch_size N, --num_workers N.

--model: a run dir (export/, else model.pt, else the latest DeepSpeed checkpoint), local-dir:DIR or an export
dir, a DeepSpeed checkpoint dir (any ZeRO stage, consolidated on the fly) or one tag in it, a model.pt
(+ --model-config), or an open_clip model name + --pretrained FILE.
"""


# CLIP_benchmark's names for the same things.
TASKS = {"retrieval": "zeroshot_retrieval", "classification": "zeroshot_classification"}
PEER_FLAGS = {"--recall_k": "recall_k", "--output": "out", "--dataset_root": "data", "--batch_size": "batch_size",
              "--num_workers": "workers"}


def parse_args(argv: List[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="clipforge eval", description=__doc__, epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="what to evaluate (see below)")
    ap.add_argument("--data", help="shard dataset dir / .tar / brace pattern, or a raw folder "
                    "or caption file (COCO, Flickr, csv ...) converted into a temp dir first (required)")
    ap.add_argument("--task", required=True, choices=tuple(TASKS) + tuple(TASKS.values()),
                    help="retrieval or classification (CLIP_benchmark's zeroshot_* names too)")
    ap.add_argument("--out", help="write the CLIP_benchmark-style JSON here")
    ap.add_argument("--model-config", help="model name or model-config JSON for weights without one")
    ap.add_argument("--pretrained", help="local weights file for an open_clip model name")
    ap.add_argument("--recall-k", nargs="+", default=["1,5,10"],
                    help="retrieval: k values, comma- or space-separated (default 1,5,10)")
    ap.add_argument("--label-key", default="label", help="classification: the KEY.json field holding the class "
                    "(name, or index into --classnames); KEY.cls is used when the field is absent")
    ap.add_argument("--classnames", help="classification: class names file (one per line, JSON list or "
                    "{index: name}); default: the sorted distinct label names")
    ap.add_argument("--templates", default="imagenet7", help="classification: prompt set (simple, imagenet7, "
                    "cifar) or a file of templates with {c}")
    ap.add_argument("--convert-dir", help="raw --data: convert into this dir and keep it (default: a temp dir, "
                    "removed at the end)")
    ap.add_argument("--dataset-name", help="the JSON's 'dataset' (default: the --data folder's name)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0, help="image decode worker processes per rank")
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
    if not args.data:
        ap.error("give --data DIR (or CLIP_benchmark's --dataset_root DIR): the shards or raw data to evaluate")
    args.task = {v: k for k, v in TASKS.items()}.get(args.task, args.task)
    try:
        args.recall_k = sorted({int(k) for part in args.recall_k for k in part.split(",") if k.strip()})
    except ValueError:
        ap.error(f"--recall-k {' '.join(args.recall_k)}: give integers, e.g. 1,5,10 or 1 5 10")
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


def _device(args) -> str:
    if args.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return args.device


def _run(args) -> int:
    from eval.datasets import open_eval_data
    from eval.distributed import comm_for_world, init_from_env, rank_world
    from eval.load_model import load_model

    init_from_env()
    rank, world = rank_world()
    device = _device(args)
    if device == "cuda" and world > 1:
        device = f"cuda:{torch.cuda.current_device()}"
    precision = args.precision if args.precision != "auto" else ("fp32" if device == "cpu" else "fp16")
    with _quiet(args.quiet):
        loaded = load_model(args.model, args.model_config, args.pretrained)
    loaded.model.to(device)
    data, temp = _open_data(args, open_eval_data, comm_for_world(), rank, loaded.preprocess_cfg)
    try:
        return _evaluate(args, loaded, data, device, precision, rank, world)
    finally:
        if temp is not None:
            if world > 1:
                torch.distributed.barrier()
            if rank == 0:
                shutil.rmtree(temp, ignore_errors=True)


def _evaluate(args, loaded, data, device: str, precision: str, rank: int, world: int) -> int:
    from eval import api, report
    from eval.distributed import comm_for_world
    from eval.templates import load_classnames, load_templates
    common = dict(batch_size=args.batch_size, device=device, precision=precision, workers=args.workers)
    if args.task == "retrieval":
        run = api.run_retrieval(loaded.model, loaded.tokenizer, loaded.transform, data, args.recall_k,
                                progress=not args.quiet, **common)
    else:
        templates = load_templates(args.templates)
        names = load_classnames(args.classnames) if args.classnames else None
        run = api.run_classification(loaded.model, loaded.tokenizer, loaded.transform, data, templates, names,
                                     args.label_key, progress=not args.quiet, **common)
    ex = report.examples(run, comm_for_world(), args.report_examples, 5) if args.report else None
    if rank == 0:
        dataset = args.dataset_name or os.path.basename(os.path.normpath(args.data.split("{")[0])) or args.data
        print(report.table(run, f"clipforge eval: {run.task} of {loaded.name} on {dataset} "
                                f"({precision}, {world} rank(s))"))
        extra = {"precision": precision, "world_size": world, "data": args.data}
        if run.task == "zeroshot_classification":  # what decides the classifier: enough to re-run it
            extra.update(templates=args.templates, prompts=templates,
                         classnames_file=args.classnames, classnames=run.extra["classnames"], label_key=args.label_key)
        else:
            extra["recall_k"] = args.recall_k
        if args.out:
            report.write_json(args.out, report.result_json(run, dataset, loaded.name, loaded.pretrained, extra))
            print(f"wrote {args.out}")
        if args.report:
            report.write_report(args.report, run, ex, data, f"{run.task}: {loaded.name} on {dataset}")
            print(f"wrote {args.report}")
    return 0


def _open_data(args, open_eval_data, comm, rank: int, preprocess_cfg):
    """-> (shards, temp dir to remove or None). Shards are used as they are; a raw folder / caption file is
    converted once (rank 0; every rank then opens the result) at >= 256 px (the val transform resizes)."""
    from eval.datasets import _is_shard_spec
    if _is_shard_spec(args.data):
        return open_eval_data(args.data), None
    size = preprocess_cfg.get("size", 224)
    size = size if isinstance(size, int) else max(size)
    out = None
    if rank == 0:
        target = args.convert_dir or tempfile.mkdtemp(prefix="clipforge-eval-")
        try:
            out = open_eval_data(args.data, convert_dir=target, image_size=max(256, size)).spec
        except BaseException:
            if not args.convert_dir:
                shutil.rmtree(target, ignore_errors=True)
            raise
    out = comm.gather_objects(out)[0]
    return open_eval_data(out), (None if args.convert_dir else out)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    from data_pipeline.shards import ShardError
    from eval.datasets import EvalDataError
    from eval.load_model import ModelLoadError
    from eval.templates import TemplateError
    try:
        return _run(args)
    except (EvalDataError, ShardError, ModelLoadError, TemplateError, ValueError, FileNotFoundError) as e:
        print(f"clipforge eval: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
