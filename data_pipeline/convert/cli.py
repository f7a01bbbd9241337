"""`clipforge convert INPUT... --out DIR`: raw images + captions -> tar shards (see docs/convert.md)."""
import argparse
import json
import os
import sys

from clipforge.dataclass_cli import add_fields, field_values
from clipforge.errors import UserError
from .api import convert
from .merge import merge
from .options import ConvertOptions

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
        unset = action.default is None or action.default is False or action.default in ("", [], argparse.SUPPRESS)
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def parser() -> argparse.ArgumentParser:
    """The flags of ConvertOptions' fields (their defaults and help live there), --out and this command's own."""
    nodes, rank = slurm_defaults()
    p = argparse.ArgumentParser(prog="clipforge convert", description=__doc__, epilog=EXAMPLES + PEERS_EPILOG,
                                formatter_class=HelpFormatter)
    p.add_argument("--out", help="output folder of the shard dataset (required); an s3://... (fsspec) URL is "
                                 "converted in a local staging folder, then uploaded, the manifest last")
    add_fields(p, ConvertOptions, defaults={"num_nodes": nodes, "node_rank": rank})
    p.add_argument("--merge-only", action="store_true", help="only write sizes.json + manifest.json of --out")
    p.add_argument("--summary-json", help="also write the final summary to this file")
    types = {action.dest: action for action in p._actions}
    for flag, dest in PEER_FLAGS.items():
        values = PEER_VALUES.get(dest, {})
        choices = types[dest].choices and tuple(types[dest].choices) + tuple(values)
        p.add_argument(flag, dest=dest, action=type(types[dest]), type=types[dest].type, choices=choices,
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # action: --caption_col repeats too
    return p


def print_summary(summary: dict) -> None:
    rejected = sum(summary["rejected"].values())
    for note in summary["inputs"]:
        print(f"input: {note}")
    print(f"clipforge convert: {summary['input_items']} input items -> {summary['written']} written, "
          f"{rejected} rejected; {summary['shards']} shards ({summary['skipped_shards']} already complete); "
          f"{summary['images_per_second']} img/s, {summary['seconds']} s")
    if summary["opt_outs"]:
        print(f"opt-outs: {summary['opt_outs']}")
    for reason, count in summary["reasons"].items():
        print(f"  {count:>8}  {reason}")
    for example in summary["rejected_examples"]:
        message = example["error_message"]  # most messages name the file already
        where = "" if example["source"] in message else f"{example['source']}: "
        print(f"  e.g. {where}{example['status']}: {message}")
    if rejected:
        print(f"every rejected item and its reason: the 'status' and 'error_message' columns of "
              f"{os.path.join(summary['out_dir'], 'shard-*.parquet')}")
    if "published" in summary:  # --out URL: converted in the staging folder, then uploaded
        print(f"published {summary['published']} file(s) from {summary['staging']} to {summary['out_dir']} "
              "(manifest last)")
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
        options = field_values(args, ConvertOptions)
        summary = convert(options.pop("inputs"), args.out, **options)
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
