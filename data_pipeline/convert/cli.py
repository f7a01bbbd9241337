"""`clipforge convert INPUT... --out DIR`: raw images + captions -> tar shards (see docs/convert.md)."""
import argparse
import json
import os
import sys

from .api import convert
from .merge import merge
from .options import ENCODE_FORMATS, FORMATS, RESIZE_MODES, ConvertError

EXAMPLES = """examples:
  clipforge convert ../shared/data/flickr8k/captions.csv --out shards/ --include-list splits/train.txt
  clipforge convert photos/ --out shards/ --image-size 224 --resize-mode center_crop --dedup --workers 8
  clipforge convert laion.parquet --format parquet --image-col URL --caption-col TEXT --out shards/ --workers 16
  clipforge convert dataset_flickr30k.json --split test --image-root flickr30k-images/ --out flickr30k-test/
  # slurm array of 16 tasks (node rank/count default from SLURM_ARRAY_TASK_ID/_COUNT), then one merge step:
  clipforge convert urls.parquet --out shards/ && clipforge convert --merge-only --out shards/
"""


def slurm_defaults(env=os.environ):
    """(num_nodes, node_rank) from a slurm array task or an srun step; (1, 0) outside slurm."""
    if env.get("SLURM_ARRAY_TASK_COUNT") and env.get("SLURM_ARRAY_TASK_ID"):
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return int(env["SLURM_ARRAY_TASK_COUNT"]), int(env["SLURM_ARRAY_TASK_ID"]) - first
    if env.get("SLURM_NTASKS") and env.get("SLURM_PROCID"):
        return int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"])
    return 1, 0


def parser() -> argparse.ArgumentParser:
    nodes, rank = slurm_defaults()
    p = argparse.ArgumentParser(prog="clipforge convert", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="folder, table, COCO/Karpathy json or URL list")
    p.add_argument("--out", required=True, help="output folder of the shard dataset")
    p.add_argument("--format", dest="fmt", default="auto", choices=FORMATS)
    p.add_argument("--image-col", help="table column with the image path or URL (default: guessed)")
    p.add_argument("--caption-col", help="table column with the caption (default: guessed)")
    p.add_argument("--keep-cols", default="", help="comma-separated columns copied into KEY.json and the parquet")
    p.add_argument("--image-root", help="folder the image paths are relative to (default: the input's folder)")
    p.add_argument("--split", help="Karpathy json: keep only this split (train also keeps restval)")
    p.add_argument("--include-list", help="file of image file names, one per line: keep only these")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--resize-mode", default="keep_ratio", choices=RESIZE_MODES)
    p.add_argument("--encode-format", default="jpg", choices=ENCODE_FORMATS)
    p.add_argument("--quality", type=int, default=95)
    p.add_argument("--min-size", type=int, default=0, help="reject images whose shorter side is smaller")
    p.add_argument("--max-aspect-ratio", type=float, default=0.0, help="reject long/short above this (0 = off)")
    p.add_argument("--max-pixels", type=int, default=89_478_485, help="refuse larger images before decoding")
    p.add_argument("--dedup", action="store_true", help="drop exact duplicate images (same source bytes)")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--threads", type=int, default=0, help="threads per worker (0: 1 for files, 16 for URLs)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per download attempt")
    p.add_argument("--retries", type=int, default=2, help="download retries (with backoff) on timeouts and 5xx")
    p.add_argument("--num-nodes", type=int, default=nodes, help=f"machines sharing this conversion (default {nodes})")
    p.add_argument("--node-rank", type=int, default=rank, help=f"this machine's rank (default {rank})")
    p.add_argument("--merge-only", action="store_true", help="only write sizes.json + manifest.json of --out")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--summary-json", help="also write the final summary to this file")
    return p


def print_summary(summary: dict) -> None:
    rejected = sum(summary["rejected"].values())
    print(f"clipforge convert: {summary['input_items']} input items -> {summary['written']} written, "
          f"{rejected} rejected; {summary['shards']} shards ({summary['skipped_shards']} already complete); "
          f"{summary['images_per_second']} img/s, {summary['seconds']} s")
    for reason, count in summary["reasons"].items():
        print(f"  {count:>8}  {reason}")
    print(f"manifest: {summary['manifest']}" if summary["manifest"] else "manifest: not yet (other shards pending)")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.merge_only:
            manifest = merge(args.out)
            print(f"clipforge convert: merged {len(manifest['shards'])} shards, {manifest['num_samples']} samples "
                  f"-> {os.path.join(args.out, 'manifest.json')}")
            return 0
        options = {key: value for key, value in vars(args).items()
                   if key not in ("inputs", "out", "merge_only", "summary_json", "keep_cols")}
        keep_cols = [column.strip() for column in args.keep_cols.split(",") if column.strip()]
        summary = convert(args.inputs, args.out, keep_cols=keep_cols, **options)
    except ConvertError as error:
        print(f"clipforge convert: error: {error}", file=sys.stderr)
        return 2
    print_summary(summary)
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
