"""`clipforge convert INPUT... --out DIR`: raw images + captions -> tar shards (see docs/convert.md)."""
import argparse
import json
import os
import sys

from clipforge_base.errors import UserError
from .api import convert
from .merge import merge
from .options import ENCODE_FORMATS, FORMATS, RESIZE_MODES

EXAMPLES = """examples:
  clipforge convert ../shared/data/flickr8k/captions.csv --out shards/ \\
      --include-list ../shared/data/flickr8k/splits/train.txt
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


# img2dataset's spellings (same meaning; hidden from the option list, listed in the epilog).
PEER_FLAGS = {"--output_folder": "out", "--input_format": "fmt", "--url_col": "image_col",
              "--caption_col": "caption_col", "--image_size": "image_size", "--resize_mode": "resize_mode",
              "--encode_format": "encode_format", "--encode_quality": "quality", "--min_image_size": "min_size",
              "--max_aspect_ratio": "max_aspect_ratio", "--number_sample_per_shard": "samples_per_shard",
              "--processes_count": "workers", "--thread_count": "threads"}
# img2dataset's value names where ours differ.
PEER_VALUES = {"fmt": {"txt": "urls"}, "resize_mode": {"no": "none"}}
PEERS_EPILOG = ("\nimg2dataset spellings also accepted: " + ", ".join(PEER_FLAGS)
                + " (--input_format txt = urls, --resize_mode no = none)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout and shows each option's default (unless its help already says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def parser() -> argparse.ArgumentParser:
    nodes, rank = slurm_defaults()
    p = argparse.ArgumentParser(prog="clipforge convert", description=__doc__, epilog=EXAMPLES + PEERS_EPILOG,
                                formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="folder, table, COCO/Karpathy json or URL list")
    p.add_argument("--out", help="output folder of the shard dataset (required)")
    p.add_argument("--format", dest="fmt", default="auto", choices=FORMATS, help="input format")
    p.add_argument("--image-col", help="table column with the image path or URL (default: guessed)")
    p.add_argument("--caption-col", help="table column with the caption (default: guessed)")
    p.add_argument("--keep-cols", default="", help="comma-separated columns copied into KEY.json and the parquet")
    p.add_argument("--image-root", help="folder the image paths are relative to (default: the input's folder)")
    p.add_argument("--split", help="Karpathy json: keep only this split (train also keeps restval)")
    p.add_argument("--include-list", help="file of image file names, one per line: keep only these")
    p.add_argument("--image-size", type=int, default=256, help="output size in pixels (see --resize-mode)")
    p.add_argument("--resize-mode", default="keep_ratio", choices=RESIZE_MODES,
                   help="keep_ratio: shorter side = size; center_crop: then the centre square; border: longer "
                        "side = size, padded to a white square (img2dataset's border); none: as is")
    p.add_argument("--encode-format", default="jpg", choices=ENCODE_FORMATS, help="image format in the tars")
    p.add_argument("--quality", type=int, default=95, help="jpg/webp quality")
    p.add_argument("--min-size", type=int, default=0, help="reject images whose shorter side is smaller")
    p.add_argument("--max-aspect-ratio", type=float, default=0.0, help="reject long/short above this (0 = off)")
    p.add_argument("--max-pixels", type=int, default=89_478_485, help="refuse larger images before decoding")
    p.add_argument("--dedup", action="store_true", help="drop exact duplicate images (same source bytes)")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="input items per shard (failures included)")
    p.add_argument("--one-caption-per-txt", "--open-clip-captions", action="store_true",
                   help="KEY.txt holds only the first caption, KEY.json all of them: open_clip's trainer joins "
                        "the lines of KEY.txt into one caption (clipforge reads KEY.json's either way)")
    p.add_argument("--max-reject-fraction", type=float, default=1.0,
                   help="exit 1 when more than this fraction of input items is rejected (and always when none "
                        "is written; 0 = any rejection fails)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--threads", type=int, default=0, help="threads per worker (0: 1 for files, 16 for URLs)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per download attempt")
    p.add_argument("--retries", type=int, default=2, help="download retries (with backoff) on timeouts and 5xx")
    p.add_argument("--num-nodes", type=int, default=nodes, help="machines sharing this conversion (from slurm)")
    p.add_argument("--node-rank", type=int, default=rank, help="this machine's rank (from slurm)")
    p.add_argument("--merge-only", action="store_true", help="only write sizes.json + manifest.json of --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar or read notes")
    p.add_argument("--summary-json", help="also write the final summary to this file")
    types = {action.dest: action for action in p._actions}
    for flag, dest in PEER_FLAGS.items():
        values = PEER_VALUES.get(dest, {})
        choices = types[dest].choices and tuple(types[dest].choices) + tuple(values)
        p.add_argument(flag, dest=dest, type=types[dest].type, choices=choices, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
    return p


def print_summary(summary: dict) -> None:
    rejected = sum(summary["rejected"].values())
    for note in summary["inputs"]:
        print(f"input: {note}")
    print(f"clipforge convert: {summary['input_items']} input items -> {summary['written']} written, "
          f"{rejected} rejected; {summary['shards']} shards ({summary['skipped_shards']} already complete); "
          f"{summary['images_per_second']} img/s, {summary['seconds']} s")
    for reason, count in summary["reasons"].items():
        print(f"  {count:>8}  {reason}")
    for example in summary["rejected_examples"]:
        message = example["error_message"]  # most messages name the file already
        where = "" if example["source"] in message else f"{example['source']}: "
        print(f"  e.g. {where}{example['status']}: {message}")
    if rejected:
        print(f"every rejected item and its reason: the 'status' and 'error_message' columns of "
              f"{os.path.join(summary['out_dir'], 'shard-*.parquet')}")
    print(f"manifest: {summary['manifest']}" if summary["manifest"] else "manifest: not yet (other shards pending)")


def too_many_rejected(summary: dict, max_fraction: float) -> str:
    """'' when the conversion is good enough, else the one line that says why it fails."""
    items, rejected = summary["input_items"], sum(summary["rejected"].values())
    if items and summary["written"] == 0:
        return f"every one of the {items} input items was rejected: see the reasons above"
    if items and rejected / items > max_fraction:
        return (f"{rejected} of {items} input items ({100 * rejected / items:.1f}%) were rejected, more than "
                f"--max-reject-fraction {max_fraction}")
    return ""


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.out:
        p.error("give --out DIR (or --output_folder DIR): the folder of the shard dataset")
    for dest, renames in PEER_VALUES.items():
        setattr(args, dest, renames.get(getattr(args, dest), getattr(args, dest)))
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
    except UserError as error:  # anything else is a bug: its traceback, exit 1
        print(f"clipforge convert: error: {error}", file=sys.stderr)
        return 2
    print_summary(summary)
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1)
    failure = too_many_rejected(summary, args.max_reject_fraction)
    if failure:
        print(f"clipforge convert: failed: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
