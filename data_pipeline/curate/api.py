"""`curate(source, out, **options)`: the Python API behind `clipforge curate` (docs/convert.md "Curation")."""
import hashlib
import os
import sys
from collections import Counter
from typing import Dict, List, Optional

from tqdm import tqdm

from clipforge.data_pipeline import remote
from clipforge.data_pipeline.convert.merge import VERSION
from clipforge.data_pipeline.embeddings import dataset_root
from clipforge.data_pipeline.shards import ShardSet, open_shards
from .clusters import cluster_ids
from .dedup import NearDuplicates, load_embeddings
from .filters import Fate, Filter, sample_filters
from .options import CurateError, CurateOptions
from .samples import Sample, input_keys, read_samples
from .scores import score_fates
from .writer import FateTable, ShardsOut, check_out_dir, write_json


# Input samples decided together: near-duplicate checks of a window's survivors run as one matrix product, and
# the window's bytes (~40 KB a 256 px JPEG) are what curate holds in memory.
WINDOW = 512


def _fate(sample: Sample, index: int, filters: List[Filter], pool: Dict[int, Fate]) -> Optional[Fate]:
    """The first per-sample or score filter that removes the sample; None when it passes them all."""
    for check in filters:
        fate = check(sample)
        if fate:
            return fate
    return pool.get(index)


def _near_duplicates(options: CurateOptions, keys: List[str]) -> Optional[NearDuplicates]:
    if not options.embeddings:
        return None
    vectors = load_embeddings(options.embeddings, options.embedding_column, keys)
    if options.dedup_clusters > len(keys):
        raise CurateError(f"--dedup-clusters {options.dedup_clusters}: more clusters than the {len(keys)} input "
                          "samples; use fewer (SemDeDup: ~N / 10,000)")
    clusters = cluster_ids(vectors, options.dedup_clusters, options.dedup_seed)
    return NearDuplicates(vectors, keys, options.dedup_threshold, clusters)


def _decide(window: List[list], dedup: Optional[NearDuplicates]) -> None:
    """Dedup last, so it only compares samples that survive the rest: the window's survivors as one block."""
    survivors = [entry for entry in window if entry[2] is None]
    if dedup and survivors:
        for entry, fate in zip(survivors, dedup.check_block([entry[1] for entry in survivors])):
            entry[2] = fate


def _write(window: List[list], shards: ShardsOut, fates: FateTable) -> None:
    for sample, _, fate in window:
        fates.add(sample, fate, None if fate else shards.add(sample))


# What curate recomputes; every other field of the input's manifest describes the samples' content (image settings,
# caption layout: txt_captions, caption_sources, ...), which curate copies unchanged, so the field carries over.
RECOMPUTED = ("format", "version", "num_samples", "input_items", "shards", "counts", "removed_by", "created_by")


def _manifest_sha256(source: str) -> Optional[str]:
    """Which version of the input this was curated from (None for tars without a manifest)."""
    path = remote.join(dataset_root(source), "manifest.json")
    if not remote.isfile(path):
        return None
    return hashlib.sha256(remote.read_bytes(path)).hexdigest()


def _manifest(options: CurateOptions, shard_set: ShardSet, shards: List[dict], fates: FateTable) -> dict:
    statuses, filters = Counter(fates.columns["status"]), Counter(f for f in fates.columns["filter"] if f)
    source = shard_set.manifest or {}
    return {
        "format": "clipforge-shards", "version": 1,
        "num_samples": sum(shard["samples"] for shard in shards),
        "input_items": len(fates.columns["key"]),
        "shards": shards,
        "counts": dict(sorted(statuses.items())),
        "removed_by": dict(sorted(filters.items())),
        **{name: value for name, value in source.items() if name not in RECOMPUTED},
        "created_by": {"version": VERSION, "command": "curate", "config": options.content(),
                       "input": {"path": options.source if remote.is_url(options.source)
                                 else os.path.abspath(options.source),
                                 "manifest_sha256": _manifest_sha256(options.source),
                                 "num_samples": len(fates.columns["key"])}},
    }


def curate(source: str, out: str, **options) -> dict:
    """Write the samples of SOURCE that pass every filter as a new shard dataset in OUT; returns its manifest.

    `options`: any other CurateOptions field (samples_per_shard, min_words, min_image_size, max_aspect_ratio,
    keep_list, remove_list, scores, score_column, min_score, top_fraction, embeddings, embedding_column,
    dedup_threshold, dedup_clusters, dedup_seed, progress). Raises CurateError / ShardError (one line, names the
    file or flag) before writing.
    """
    options = CurateOptions(source=str(source), out=str(out), **options)
    options.validate()
    shard_set = open_shards(options.source)
    keys = input_keys(shard_set)
    filters, pool, dedup = sample_filters(options), score_fates(options, keys), _near_duplicates(options, keys)
    check_out_dir(options.out)  # only now: a bad side file leaves no empty --out behind
    shards, fates = ShardsOut(options.out, options.samples_per_shard), FateTable()
    bar = tqdm(read_samples(shard_set), total=len(keys), unit="sample", desc="curate", file=sys.stderr,
               disable=not options.progress)
    window: List[list] = []  # [sample, input index, fate], in input order
    for index, sample in enumerate(bar):
        window.append([sample, index, _fate(sample, index, filters, pool)])
        if len(window) == WINDOW or index == len(keys) - 1:
            _decide(window, dedup)
            _write(window, shards, fates)
            window = []
    shards.flush()
    fates.write(options.out)
    manifest = _manifest(options, shard_set, shards.shards, fates)
    write_json(os.path.join(options.out, "sizes.json"), {s["name"]: s["samples"] for s in shards.shards})
    write_json(os.path.join(options.out, "manifest.json"), manifest)  # last: its presence marks the dataset done
    return manifest
