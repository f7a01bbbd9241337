"""`convert(inputs, out_dir, ...)`: the Python API behind `clipforge convert`."""
import multiprocessing
import os
import sys
import time
from collections import Counter
from typing import Dict, List

from tqdm import tqdm

from clipforge.data_pipeline import remote
from clipforge.data_pipeline.shards import shard_name
from .merge import merge, missing_shards
from .options import ConvertError, ConvertOptions
from .optout import ROBOTS, describe
from .plan import make_plan, owned_by, shard_tasks, write_or_check_plan
from .prefetch import Prefetch, is_remote, ordered_shards
from .process import process_chunk, worker_ready
from .readers import read_inputs
from .shard_writer import read_stats, remove_temporaries, write_shard
from .upload import publish, staging_dir

EXTENSIONS = {"jpg": "jpg", "webp": "webp", "png": "png"}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Dedup:
    """Exact duplicates by sha256 of the source bytes; the first item in input order wins.

    Shards are written in index order by one process, so "first" never depends on worker timing. Seeded from this
    node's complete shards on resume; with several nodes, each node dedups its own shards (cross-node duplicates stay).
    """

    def __init__(self, enabled: bool):
        self.enabled, self.seen = enabled, {}

    def seed(self, out_dir: str, index: int) -> None:
        import pyarrow.parquet as pq
        table = pq.read_table(os.path.join(out_dir, shard_name(index) + ".parquet"), columns=["key", "status", "sha256"])
        for key, status, sha in zip(*(table.column(c).to_pylist() for c in ("key", "status", "sha256"))):
            if status == "success":
                self.seen.setdefault(sha, key)

    def apply(self, results: List[dict]) -> None:
        if not self.enabled:
            return
        for result in results:
            if result["status"] != "success":
                continue
            first = self.seen.setdefault(result["sha256"], result["key"])
            if first != result["key"]:
                result.update(status="duplicate", reason="same bytes as an earlier item", data=None,
                              error_message=f"same bytes as an earlier item: key {first} (sha256 {result['sha256'][:12]})")


# Items per task handed to a worker: small enough that 2..64 workers stay busy on a single 1000-item shard,
# big enough that pickling results (~40 KB/image) and task overhead stay below 1% of the image work.
CHUNK = 64


def _run_pool(todo, options: ConvertOptions, finish, bar, fetch=None) -> float:
    """Workers process chunks of shards; results come back in task order (imap), so shard i is written before
    shard i+1 and its content never depends on which worker was faster. With URLs (`fetch`), chunks of finished
    downloads come back in any order and prefetch.ordered_shards puts every shard together in input order."""
    tasks, parts = [], {}
    for index, keyed, _ in todo:
        chunks = [keyed[start:start + CHUNK] for start in range(0, len(keyed), CHUNK)]
        parts[index] = len(chunks)
        tasks += [(index, chunk, options) for chunk in chunks]
    pending = []
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds threads (tqdm)
    size = min(options.workers, len(tasks))
    with context.Pool(size) as pool:
        # Workers import the codecs (~0.5 s) before they work: keep that start-up out of the reported rate.
        pool.map(worker_ready, range(size), chunksize=1)
        ready = time.perf_counter()
        if fetch:
            for index, results in ordered_shards(fetch, pool.imap_unordered, CHUNK, bar):
                finish(index, results)
            return ready
        for index, results in pool.imap(process_chunk, tasks):
            pending += results
            bar.update(len(results))
            parts[index] -= 1
            if parts[index] == 0:
                finish(index, pending)
                pending = []
    return ready


def check_out_dir(out_dir: str) -> None:
    """Before reading any input: a wrong --out is found at once, not after minutes of reading tables."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConvertError(f"--out {out_dir}: is an existing file, not a folder; give a new or empty folder")


def make_out_dir(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise ConvertError(f"--out {out_dir}: cannot create the folder ({error.strerror}); give a writable path")


def rejected_examples(out_dir: str, indices: List[int], limit: int = 3) -> List[dict]:
    """The first few rejected items (source, status, why) from the shards' parquets, in input order."""
    import pyarrow.parquet as pq
    found: List[dict] = []
    for index in indices:
        path = os.path.join(out_dir, shard_name(index) + ".parquet")
        rows = pq.read_table(path, columns=["source", "status", "error_message"]).to_pylist()
        found += [row for row in rows if row["status"] != "success"][:limit - len(found)]
        if len(found) >= limit:
            break
    return found


def _convert_to_store(inputs: List[str], url: str, options: dict) -> Dict:
    if options.get("num_nodes", 1) > 1:
        raise ConvertError(f"--out {url}: nodes do not share a local staging folder; convert into a folder all "
                           "nodes see, then upload it (or convert to the URL on one node)")
    staging = staging_dir(url)
    summary = convert(inputs, staging, **options)
    if summary["manifest"]:
        summary = {**summary, "out_dir": url, "manifest": f"{url.rstrip('/')}/manifest.json", "staging": staging,
                   "published": publish(staging, url)}
    return summary


def convert(inputs: List[str], out_dir: str, **options) -> Dict:
    """Convert INPUTS into a shard dataset in OUT_DIR (DESIGN.md "Shard dataset"); returns the run summary.

    `options`: any other ConvertOptions field (fmt, image_size, resize_mode, samples_per_shard, workers,
    include_list, image_col, caption_col, keep_cols, dedup, num_nodes, node_rank, progress, ...), defaults there.
    Raises ConvertError (one line, names the file/flag) for bad input found before per-item work.
    An fsspec URL as OUT_DIR (s3://...) is converted in a local staging folder and published (convert/upload.py).
    """
    if remote.is_url(out_dir):
        return _convert_to_store(inputs, out_dir, options)
    # Absolute input paths: a re-run or another node from another working directory has the same plan.
    options = ConvertOptions(inputs=[os.path.abspath(str(path)) for path in inputs], **options)
    options.validate()
    check_out_dir(out_dir)
    log = _log if options.progress else (lambda message: None)
    started = time.perf_counter()
    items, notes = read_inputs(options, log=log)
    ROBOTS.clear()  # hosts are read once per conversion: a site may have changed its robots.txt since the last
    make_out_dir(out_dir)
    plan = make_plan(items, options)
    write_or_check_plan(out_dir, plan)
    mine = [(index, keyed) for index, keyed in shard_tasks(items, options) if owned_by(index, options)]
    complete = {index for index, _ in mine if read_stats(out_dir, index) is not None}
    todo = [(index, keyed, options) for index, keyed in mine if index not in complete]
    remove_temporaries(out_dir, [index for index, _, _ in todo])
    dedup = _Dedup(options.dedup)
    unseeded = sorted(complete) if options.dedup else []
    if complete:
        log(f"clipforge convert: resuming: {len(complete)} complete shard(s) skipped, {len(todo)} to do")
    extension = EXTENSIONS[options.encode_format]
    work_items = sum(len(keyed) for _, keyed, _ in todo)
    bar = tqdm(total=work_items, unit="img", desc="convert", disable=not options.progress or not todo,
               file=sys.stderr, smoothing=0.1)
    done_started = time.perf_counter()

    def finish(index: int, results: List[dict]) -> None:
        # Dedup must see exactly the shards before this one: index order is guaranteed by the ordered map below,
        # and complete shards from an earlier run join as soon as they precede (also when a middle one is redone).
        while unseeded and unseeded[0] < index:
            dedup.seed(out_dir, unseeded.pop(0))
        dedup.apply(results)
        write_shard(out_dir, index, results, extension, options.keep_cols, options.one_caption_per_txt,
                    list(options.extra_caption_sources()))

    # URL downloads start now, while the workers start (prefetch.py)
    fetch = Prefetch(todo, options) if any(is_remote(item.source) for _, keyed, _ in todo for _, item in keyed) else None
    try:
        if fetch and options.workers == 1:
            for index, results in ordered_shards(fetch, map, CHUNK, bar):
                finish(index, results)
        elif options.workers == 1 or not todo:
            for task in todo:
                finish(*process_chunk(task, on_item=lambda: bar.update(1)))
        else:
            done_started = _run_pool(todo, options, finish, bar, fetch)
    finally:
        if fetch:
            fetch.close()
        bar.close()
    seconds_working = time.perf_counter() - done_started
    counts, reasons, with_rejects = Counter(), Counter(), []
    for index, _ in mine:
        stats = read_stats(out_dir, index)
        counts.update(stats["counts"])
        reasons.update(stats["errors"])
        if stats["samples"] < stats["input_items"]:
            with_rejects.append(index)
    manifest = None
    if not missing_shards(out_dir, plan["num_shards"]):
        manifest = merge(out_dir)
    elif options.num_nodes > 1:
        log(f"clipforge convert: node {options.node_rank}/{options.num_nodes} done; the manifest is written when "
            f"all {plan['num_shards']} shards are complete (clipforge convert --merge-only --out {out_dir})")
    summary = {
        "out_dir": out_dir, "input_items": sum(len(keyed) for _, keyed in mine), "written": counts.get("success", 0),
        "rejected": {status: n for status, n in sorted(counts.items()) if status != "success"},
        "reasons": dict(reasons.most_common()), "rejected_examples": rejected_examples(out_dir, with_rejects),
        "inputs": notes, "shards": len(mine), "skipped_shards": len(complete), "processed_items": work_items,
        "seconds": round(time.perf_counter() - started, 3),
        "images_per_second": round(work_items / seconds_working, 1) if work_items and seconds_working > 0 else 0.0,
        "manifest": os.path.join(out_dir, "manifest.json") if manifest else None,
        "node_rank": options.node_rank, "num_nodes": options.num_nodes,
        # only URL inputs can opt out: local files have no site to ask
        "opt_outs": describe(options.disallow_optout, options.respect_robots)
        if any(item.source.startswith(("http://", "https://")) for item in items) else None,
    }
    return summary
