"""Download throughput: clipforge convert vs img2dataset fetching the same URLs from a loopback server, in one run.

    python -m bench.convert_urls [--quick] [--json FILE] [--no-write]

Input: the 300 Flickr8k originals (~500x375 JPEG, ../shared/data/flickr8k/originals) served 5 times under
different paths (1,500 URLs; quick: 40) by bench/url_server.py on 127.0.0.1: 50-300 ms to the first byte, 2 % 404,
1 % 500, 1 % bodies cut off, 3 % bodies trickling over 1-2 s, a pure function of (seed, path). Both tools read the
same CSV of URLs and write 256-px shorter-side (keep_ratio) JPEGs at quality 95, 750 items per shard, one process
per core, 10 s timeout, no retries (the failures are permanent). clipforge runs with its defaults; img2dataset with
16, 64 and 256 threads per process (256 is its default) and the best counts. Figure: images written per wall-clock
second of the whole command (start-up included); best of 2 alternating rounds (quick: 1, img2dataset at 256 only).
Checked: each tool's successes are exactly the URLs the schedule lets succeed, and every failure has a message.
Writes BENCHMARKS.md's "Downloads" section (its markers only) unless --quick or --no-write.
"""
import argparse
import csv
import json
import os
import sys
import tempfile
import urllib.parse
from collections import Counter
from pathlib import Path

from bench.common import machine_info, markdown_table, result, write_atomic, write_doc_section
from bench.convert import ORIGINALS, PEER_BIN, _peer_version, _timed
from bench.url_server import FATES, fate, image_server

REPO = Path(__file__).resolve().parents[1]
SEED = 0
SHARD = 750          # 2 shards of 1,500: img2dataset works a shard per process, so 2 keep its 2 processes busy
OUTPUT = ["256", "keep_ratio", "95"]   # image size, resize mode, JPEG quality: the same for both tools


def _url_list(work: Path, base: str, count: int, copies: int) -> list:
    """urls.csv (url, caption) for both tools -> the URLs."""
    with open(ORIGINALS / "captions.csv", newline="", encoding="utf-8") as handle:
        first_caption = {}
        for row in csv.DictReader(handle):
            first_caption.setdefault(row["image"], row["caption"])
    names = sorted(first_caption)[:count]
    urls = [(f"{base}/{copy}/{name}", first_caption[name]) for copy in range(copies) for name in names]
    with open(work / "urls.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "caption"])
        writer.writerows(urls)
    return [url for url, _ in urls]


def _outcomes(out: Path) -> dict:
    """url -> (status, error_message) from the tool's parquets (both write img2dataset's `url` column)."""
    import pyarrow.parquet as pq
    rows = {}
    for path in sorted(out.glob("*.parquet")):
        for row in pq.read_table(path, columns=["url", "status", "error_message"]).to_pylist():
            rows[row["url"]] = (row["status"], row["error_message"] or "")
    return rows


def _clipforge(work: Path, out: Path, workers: int):
    command = [sys.executable, "-m", "clipforge.data_pipeline", "convert", str(work / "urls.csv"), "--out", str(out),
               "--image-col", "url", "--caption-col", "caption", "--workers", str(workers),
               "--image-size", OUTPUT[0], "--resize-mode", OUTPUT[1], "--quality", OUTPUT[2],
               "--samples-per-shard", str(SHARD), "--timeout", "10", "--retries", "0",
               "--no-progress", "--summary-json", str(out) + ".summary.json"]
    seconds, _ = _timed(command, REPO)
    steady = json.loads(Path(str(out) + ".summary.json").read_text())["images_per_second"]
    return seconds, _outcomes(out), steady


def _img2dataset(work: Path, out: Path, workers: int, threads: int):
    command = [str(PEER_BIN / "img2dataset"), "--url_list", str(work / "urls.csv"), "--input_format", "csv",
               "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
               "--output_folder", str(out), "--processes_count", str(workers), "--thread_count", str(threads),
               "--image_size", OUTPUT[0], "--resize_mode", OUTPUT[1], "--encode_quality", OUTPUT[2],
               "--number_sample_per_shard", str(SHARD), "--timeout", "10", "--retries", "0",
               "--enable_wandb", "False"]
    seconds, _ = _timed(command, work)
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    span = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    return seconds, _outcomes(out), sum(s["count"] for s in stats) / span if span > 0 else 0.0


def _check(tool: str, outcomes: dict, urls: list) -> dict:
    """Every URL recorded, no success the schedule does not serve whole, every failure says why. A URL the schedule
    serves that failed anyway (a timeout on a starved machine) is counted: `lost`."""
    expected = {url for url in urls if fate(urllib.parse.urlparse(url).path, SEED).succeeds}
    got = {url for url, (status, _) in outcomes.items() if status == "success"}
    silent = [url for url, (status, message) in outcomes.items() if status != "success" and not message.strip()]
    if set(outcomes) != set(urls) or got - expected or silent:
        raise RuntimeError(f"{tool}: {len(outcomes)} of {len(urls)} URLs recorded, {len(got - expected)} unexpected "
                           f"successes, {len(silent)} failures without a message")
    return {"written": len(got), "success_rate": len(got) / len(urls), "lost": len(expected - got)}


def _reasons(outcomes: dict, seed: int) -> dict:
    """server fate -> the tool's message for its first URL (host and port removed)."""
    found = {}
    for url, (status, message) in sorted(outcomes.items()):
        parsed = urllib.parse.urlparse(url)
        kind = fate(parsed.path, seed).kind
        if status != "success":
            found.setdefault(kind, message.replace(f"{parsed.scheme}://{parsed.netloc}", "")[:90])
    return found


def measure(quick: bool, rounds: int = 0, peer_threads=()) -> dict:
    """rounds, peer_threads: fewer runs on a busy machine (default: 2 rounds at 16, 64 and 256; quick: 1 at 256)."""
    workers = len(os.sched_getaffinity(0))
    count, copies = (40, 1) if quick else (300, 5)
    rounds = rounds or (1 if quick else 2)
    peer_threads = list(peer_threads) or ([256] if quick else [16, 64, 256])
    version = _peer_version()
    loads, ours, peers = [], [], {threads: [] for threads in peer_threads}
    with tempfile.TemporaryDirectory(prefix="bench-urls-") as tmp, image_server(str(ORIGINALS), SEED) as base:
        work = Path(tmp)
        urls = _url_list(work, base, count, copies)
        for round_ in range(rounds):
            loads.append(os.getloadavg()[0])
            run = _clipforge(work, work / f"cf{round_}", workers)
            ours.append((run[0], _check("clipforge", run[1], urls), run[2], _reasons(run[1], SEED)))
            for threads in peer_threads if version else []:
                loads.append(os.getloadavg()[0])
                run = _img2dataset(work, work / f"i2d{threads}-{round_}", workers, threads)
                peers[threads].append((run[0], _check("img2dataset", run[1], urls), run[2], _reasons(run[1], SEED)))
        loads.append(os.getloadavg()[0])
    return {"urls": len(urls), "workers": workers, "rounds": rounds, "version": version, "loads": loads,
            "clipforge": min(ours, key=lambda r: r[0]), "peers": {t: min(r, key=lambda x: x[0])
                                                                  for t, r in peers.items() if r},
            "machine": machine_info()}


def _row(m: dict) -> dict:
    metric = (f"images/s downloading {m['urls']} URLs (loopback, 50-300 ms latency, 7 % faults) -> 256 px JPEG q95, "
              f"{m['workers']} processes")
    ours = m["clipforge"]
    notes = (f"best of {m['rounds']}, 1-min load average {min(m['loads']):.1f}-{max(m['loads']):.1f} on "
             f"{m['workers']} cores; clipforge {ours[0]:.2f} s, {ours[1]['success_rate']:.1%} written ({ours[1]['lost']} lost to timeouts)")
    if not m["peers"]:
        return result("convert_urls", "img2dataset", metric, ours[1]["written"] / ours[0], None,
                      notes=notes + "; img2dataset not installed: make .venv-peers/.stamp-bench")
    threads, best = min(m["peers"].items(), key=lambda kv: kv[1][0])
    notes += (f"; img2dataset {m['version']} at its best {threads} threads/process {best[0]:.2f} s, "
              f"{best[1]['success_rate']:.1%} written ({best[1]['lost']} lost)")
    return result("convert_urls", f"img2dataset {m['version']}", metric, ours[1]["written"] / ours[0],
                  best[1]["written"] / best[0], notes=notes)


def _body(m: dict, row: dict) -> str:
    info, ours = m["machine"], m["clipforge"]
    lines = [["clipforge (defaults)", f"{ours[0]:.2f}", ours[1]["written"] / ours[0], ours[2],
              f"{ours[1]['success_rate']:.1%}"]]
    lines += [[f"img2dataset {m['version']}, {t} threads/process", f"{r[0]:.2f}", r[1]["written"] / r[0], r[2],
               f"{r[1]['success_rate']:.1%}"] for t, r in sorted(m["peers"].items())]
    kinds = [kind for _, kind in FATES if kind != "slow_body"]
    best_peer = min(m["peers"].values(), key=lambda r: r[0]) if m["peers"] else None
    reasons = [[kind, ours[3].get(kind, "—"), best_peer[3].get(kind, "—") if best_peer else "—"] for kind in kinds]
    ratio = f"{row['ratio']:.2f}×" if row["ratio"] else "— (peer missing)"
    return (f"`python -m bench.convert_urls`: {m['urls']} URLs (Flickr8k originals, ~500×375) from "
            f"bench/url_server.py on 127.0.0.1 (seed {SEED}: 50–300 ms to the first byte, 2 % 404, 1 % 500, 1 % cut "
            f"off, 3 % slow bodies of 1–2 s), both tools → 256 px keep_ratio JPEG q95, {SHARD} per shard, "
            f"{m['workers']} processes, timeout 10 s, no retries; best of {m['rounds']} alternating rounds. "
            f"{info['cpu']}, {info['cores']} cores, {info['date']}; 1-min load average during the runs "
            f"{min(m['loads']):.1f}–{max(m['loads']):.1f}. **clipforge / best img2dataset: {ratio}** (images "
            f"written per wall second, start-up included).\n\n"
            + markdown_table(["tool", "wall s", "images/s", "steady items/s", "written"], lines)
            + "\nSteady items/s: clipforge's own rate after its workers start; img2dataset's from its shards' "
              "start/end times. Every failure is recorded with its reason (the first of each kind, host removed):\n\n"
            + markdown_table(["server fault", "clipforge", "img2dataset"], reasons))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.convert_urls", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 URLs, one round (CI smoke)")
    ap.add_argument("--json", metavar="FILE", help="also write the result row here")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--rounds", type=int, default=0, help="alternating rounds (default 2; quick 1)")
    ap.add_argument("--peer-threads", default="", help="img2dataset's threads per process to try, comma-separated "
                                                      "(default 16,64,256; quick 256)")
    args = ap.parse_args(argv)
    if not ORIGINALS.is_dir():
        print(f"bench.convert_urls: skipped: {ORIGINALS} not found (set CLIPFORGE_FLICKR8K)", file=sys.stderr)
        return 0
    m = measure(args.quick, args.rounds, [int(t) for t in args.peer_threads.split(",") if t])
    row = _row(m)
    text = json.dumps(row, indent=2)
    print(text)
    if args.json:
        write_atomic(args.json, text + "\n")
    body = _body(m, row)
    print(body, file=sys.stderr)
    if not (args.quick or args.no_write):
        write_doc_section(REPO / "BENCHMARKS.md", "downloads",
                          "Downloads: clipforge vs img2dataset over HTTP", body)
    return 0


def run(quick: bool) -> dict:
    """bench.run_all's entry point: the row only."""
    if not ORIGINALS.is_dir():
        return result("convert_urls", "img2dataset", "images/s downloading URLs", 0.0, None,
                      notes=f"skipped: {ORIGINALS} not found")
    return _row(measure(quick))


if __name__ == "__main__":
    raise SystemExit(main())
