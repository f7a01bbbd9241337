"""`clipforge curate SHARDS --out NEW [filters]`: a shard dataset -> a new, resharded one of the samples that pass
every filter; curation.parquet in NEW gives every input sample's fate (see docs/convert.md "Curation").

Filters, in the order they decide a sample's fate (the first that removes it names it): --keep-list,
--remove-list, --min-words, --min-image-size, --max-aspect-ratio, --min-score, --top-fraction, then near-duplicate
removal (--embeddings), which compares only the samples that passed all the others (--dedup-clusters: only
those of the same k-means cluster).
"""
import argparse
import os
import sys

from clipforge.dataclass_cli import add_fields, field_values
from clipforge.errors import UserError
from clipforge.data_pipeline.convert.cli import HelpFormatter
from .api import curate
from .options import CurateOptions

EXAMPLES = """examples:
  clipforge curate runs/demo/shards-train --out curated/ --min-words 3 --min-image-size 64 --max-aspect-ratio 3
  clipforge curate runs/demo/shards-train --out top30/ --scores clip_scores.parquet --top-fraction 0.3
  clipforge curate runs/demo/shards-train --out deduped/ --embeddings image_embeddings.npy --dedup-threshold 0.95
  clipforge curate runs/demo/shards-train --out semdedup/ --embeddings image_embeddings.npy --dedup-threshold 0.95 \\
    --dedup-clusters 8
  clipforge curate runs/demo/shards-train --out cleaned/ --remove-list removed_sha256.txt --samples-per-shard 100

--scores: a parquet with 'key' (the shard key) and the score column, a row per input sample (extra rows ignored).
--embeddings: a .npy [samples, dim] in the dataset's sample order (the order `clipforge verify` reads), or a
parquet with 'key' and a list column. Exit 0; 1 when every sample was removed; 2 on a bad flag or file.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipforge curate", description=__doc__, epilog=EXAMPLES,
                                formatter_class=HelpFormatter)
    add_fields(p, CurateOptions)
    return p


def print_summary(manifest: dict, out_dir: str) -> None:
    removed = manifest["input_items"] - manifest["num_samples"]
    print(f"clipforge curate: {manifest['input_items']} input samples -> {manifest['num_samples']} kept, "
          f"{removed} removed; {len(manifest['shards'])} shards")
    for name, count in manifest["removed_by"].items():
        print(f"  {count:>8}  {name}")
    print(f"every sample's fate: {os.path.join(out_dir, 'curation.parquet')}")
    print(f"manifest: {os.path.join(out_dir, 'manifest.json')}")


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    options = field_values(args, CurateOptions)
    try:
        manifest = curate(options.pop("source"), options.pop("out"), **options)
    except UserError as error:  # anything else is a bug: its traceback, exit 1
        print(f"clipforge curate: error: {error}", file=sys.stderr)
        return 2
    print_summary(manifest, args.out)
    if manifest["input_items"] and not manifest["num_samples"]:
        print("clipforge curate: failed: every sample was removed (see the reasons above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
