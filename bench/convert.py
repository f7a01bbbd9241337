"""Converter throughput: clipforge convert vs img2dataset on the same local JPEGs, in one run.

    python -m bench.convert [--quick]

Input: the 300 Flickr8k originals (~500x375 JPEG, ../shared/data/flickr8k/originals), listed 5 times under
different names (symlinks, so no tool can skip repeats: 1,500 images); quick: 100 images once. Both tools make
256-px shorter-side (keep_ratio) JPEGs at quality 95 with one process per core: clipforge reads a CSV of paths,
img2dataset a CSV of file:// URLs (its only way to read local files) with 16 threads per process, no wandb.
The figure is images / wall-clock second of the whole command (start-up included, what a user waits for);
best of 3 alternating rounds (quick: 1). Each tool's own steady-state rate (after start-up) is in the notes.
img2dataset lives in its own venv (.venv-peers/img2dataset, `pip install img2dataset`) so its pins cannot touch
clipforge's; without it the row reports the peer as missing.
"""
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

from bench.common import cli, markdown_table, result

REPO = Path(__file__).resolve().parents[1]
ORIGINALS = Path(os.environ.get("CLIPFORGE_FLICKR8K", REPO.parent / "shared" / "data" / "flickr8k")) / "originals"
PEER_BIN = REPO / ".venv-peers" / "img2dataset" / "bin"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def first_captions(count: int) -> Dict[str, str]:
    """The first `count` Flickr8k images by name, each with its first caption."""
    with open(ORIGINALS / "captions.csv", newline="", encoding="utf-8") as handle:
        first_caption = {}
        for row in csv.DictReader(handle):
            first_caption.setdefault(row["image"], row["caption"])
    return {name: first_caption[name] for name in sorted(first_caption)[:count]}


def _inputs(work: Path, count: int, copies: int, source: Path = ORIGINALS) -> int:
    """paths.csv (clipforge) and urls.csv (img2dataset) over the same `count x copies` image files: symlinks
    into `source` (the originals, or bench.convert_large's enlarged copies)."""
    captions = first_captions(count)
    (work / "img").mkdir()
    with open(work / "paths.csv", "w", newline="") as paths, open(work / "urls.csv", "w", newline="") as urls:
        path_rows, url_rows = csv.writer(paths), csv.writer(urls)
        path_rows.writerow(["image", "caption"])
        url_rows.writerow(["url", "caption"])
        for copy in range(copies):
            for name, caption in captions.items():
                link = work / "img" / f"{copy}_{name}"
                link.symlink_to(source / name)
                path_rows.writerow([str(link), caption])
                url_rows.writerow([link.as_uri(), caption])
    return len(captions) * copies


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children and their joined workers
    return usage.ru_utime + usage.ru_stime


def _timed(command, cwd: Path):
    """-> (wall seconds, CPU seconds of the command and all its processes)."""
    cpu, started = _cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, _cpu_seconds() - cpu


def _clipforge(work: Path, out: Path, workers: int):
    command = [sys.executable, "-m", "clipforge.data_pipeline", "convert", str(work / "paths.csv"), "--out", str(out),
               "--workers", str(workers), "--image-size", "256", "--resize-mode", "keep_ratio", "--quality", "95",
               "--no-progress", "--summary-json", str(out) + ".summary.json"]
    seconds, cpu = _timed(command, REPO)
    summary = json.loads(Path(str(out) + ".summary.json").read_text())
    return seconds, summary["written"], summary["images_per_second"], cpu


def _img2dataset(work: Path, out: Path, workers: int):
    command = [str(PEER_BIN / "img2dataset"), "--url_list", str(work / "urls.csv"), "--input_format", "csv",
               "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
               "--output_folder", str(out), "--processes_count", str(workers), "--thread_count", "16",
               "--image_size", "256", "--resize_mode", "keep_ratio", "--encode_quality", "95",
               "--number_sample_per_shard", "1000", "--enable_wandb", "False"]
    seconds, cpu = _timed(command, work)
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    written = sum(s["successes"] for s in stats)
    # steady state: images over the span from the first shard's start to the last shard's end
    span = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    return seconds, written, written / span if span > 0 else 0.0, cpu


def _peer_version() -> str:
    try:
        return subprocess.run([str(PEER_BIN / "python"), "-c", "import importlib.metadata as m; "
                               "print(m.version('img2dataset'))"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run(quick: bool) -> dict:
    workers = len(os.sched_getaffinity(0))
    count, copies, rounds = (100, 1, 1) if quick else (300, 5, 3)
    metric = f"images/s end-to-end, Flickr8k originals (~500x375 JPEG) -> 256 px keep_ratio JPEG q95, {workers} processes"
    version = _peer_version()
    if not ORIGINALS.is_dir():
        return result("convert", "img2dataset", metric, 0.0, None, notes=f"skipped: {ORIGINALS} not found")
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        work = Path(tmp)
        images = _inputs(work, count, copies)
        ours, peers = [], []
        for round_ in range(rounds):
            ours.append(_clipforge(work, work / f"cf{round_}", workers))
            if version:
                peers.append(_img2dataset(work, work / f"i2d{round_}", workers))
    best = min(ours)
    if any(run_[1] != images for run_ in ours + peers):
        raise RuntimeError(f"a tool did not write all {images} images: {ours} {peers}")
    # Images per CPU-second (all processes, start-up included) barely depends on what else runs on the machine;
    # wall-clock figures do (load average in the notes).
    notes = (f"{images} images, best of {rounds}, load average {os.getloadavg()[0]:.1f} on {workers} cores; "
             f"clipforge {best[0]:.2f} s, steady state {max(r[2] for r in ours):.0f} img/s, "
             f"{images / min(r[3] for r in ours):.0f} img/CPU-s")
    peer_value = None
    if peers:
        peer_best = min(peers)
        peer_value = images / peer_best[0]
        notes += (f"; img2dataset {version} {peer_best[0]:.2f} s, steady state {max(r[2] for r in peers):.0f} "
                  f"img/s, {images / min(r[3] for r in peers):.0f} img/CPU-s (16 threads/process)")
    else:
        notes += "; img2dataset not installed: python -m venv .venv-peers/img2dataset && " \
                 ".venv-peers/img2dataset/bin/pip install img2dataset"
    row = result("convert", f"img2dataset {version}".strip(), metric, images / best[0], peer_value, notes=notes)
    print(markdown_table(["benchmark", "metric", "clipforge", "img2dataset", "ratio", "notes"],
                         [[row["name"], metric, row["clipforge"], peer_value, row["ratio"], notes]]), file=sys.stderr)
    return row


if __name__ == "__main__":
    raise SystemExit(cli(run))
