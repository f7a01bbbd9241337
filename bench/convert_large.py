"""Converter throughput on large originals: clipforge convert vs img2dataset on the same local JPEGs, in one run.

    python -m bench.convert_large [--quick] [--json FILE] [--no-write]

Input: 150 Flickr8k originals (~500x375, ../shared/data/flickr8k/originals) re-encoded at 4x their size
(~2000x1500: Pillow bicubic upscale, JPEG q95, in a temporary folder), each listed 4 times under different names
(symlinks: 600 images; quick: 20 once). The same output as bench/convert.py: 256-px shorter side (keep_ratio),
JPEG q95, one process per core, img2dataset reading file:// URLs with 16 threads per process. At 5.9x the target,
clipforge decodes these in libjpeg's DCT domain at 1/4 scale (docs/convert.md), img2dataset decodes all pixels.
Figure: images per wall-clock second of the whole command; best of 3 alternating rounds (quick: 1).
Writes BENCHMARKS.md's "Large originals" section (its markers only) unless --quick or --no-write.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench.common import fmt, machine_info, result, write_atomic, write_doc_section
from bench.convert import ORIGINALS, _clipforge, _img2dataset, _inputs, _peer_version, first_captions

REPO = Path(__file__).resolve().parents[1]
SCALE = 4


def _large_inputs(work: Path, count: int, copies: int) -> tuple:
    """paths.csv / urls.csv (bench.convert's layout) over `count` originals enlarged SCALE times
    -> (images, median size)."""
    from PIL import Image

    (work / "large").mkdir()
    sizes = []
    for name in first_captions(count):
        with Image.open(ORIGINALS / name) as image:
            image = image.convert("RGB")
            sizes.append((image.width * SCALE, image.height * SCALE))
            image.resize(sizes[-1], Image.BICUBIC).save(work / "large" / name, quality=95)
    images = _inputs(work, count, copies, source=work / "large")
    return images, sorted(sizes, key=lambda wh: wh[0] * wh[1])[len(sizes) // 2]


def measure(quick: bool, rounds: int = 0) -> dict:
    """rounds: fewer on a busy machine (default 3; quick 1)."""
    workers = len(os.sched_getaffinity(0))
    count, copies = (20, 1) if quick else (150, 4)
    rounds = rounds or (1 if quick else 3)
    version = _peer_version()
    loads, ours, peers = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        work = Path(tmp)
        images, size = _large_inputs(work, count, copies)
        megabytes = sum(p.stat().st_size for p in (work / "large").iterdir()) / count / 2**20
        for round_ in range(rounds):
            loads.append(os.getloadavg()[0])
            ours.append(_clipforge(work, work / f"cf{round_}", workers))
            if version:
                loads.append(os.getloadavg()[0])
                peers.append(_img2dataset(work, work / f"i2d{round_}", workers))
        loads.append(os.getloadavg()[0])
    if any(run_[1] != images for run_ in ours + peers):
        raise RuntimeError(f"a tool did not write all {images} images: {ours} {peers}")
    return {"images": images, "size": size, "megabytes": megabytes, "workers": workers, "rounds": rounds,
            "version": version, "loads": loads, "clipforge": min(ours), "peer": min(peers) if peers else None,
            "machine": machine_info()}


def _row(m: dict) -> dict:
    metric = (f"images/s, Flickr8k originals re-encoded at {SCALE}x (median {m['size'][0]}x{m['size'][1]}, "
              f"{m['megabytes']:.1f} MB) -> 256 px keep_ratio JPEG q95, {m['workers']} processes")
    ours, peer = m["clipforge"], m["peer"]
    notes = (f"{m['images']} images, best of {m['rounds']}, 1-min load average {min(m['loads']):.1f}-"
             f"{max(m['loads']):.1f} on {m['workers']} cores; clipforge {ours[0]:.2f} s (DCT-domain decode at 1/4)")
    if peer is None:
        return result("convert_large", "img2dataset", metric, m["images"] / ours[0], None,
                      notes=notes + "; img2dataset not installed: make .venv-peers/.stamp-bench")
    notes += f"; img2dataset {m['version']} {peer[0]:.2f} s (16 threads/process, full decode)"
    return result("convert_large", f"img2dataset {m['version']}", metric, m["images"] / ours[0],
                  m["images"] / peer[0], notes=notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.convert_large", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 images, one round (CI smoke)")
    ap.add_argument("--json", metavar="FILE", help="also write the result row here")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--rounds", type=int, default=0, help="alternating rounds (default 3; quick 1)")
    args = ap.parse_args(argv)
    if not ORIGINALS.is_dir():
        print(f"bench.convert_large: skipped: {ORIGINALS} not found (set CLIPFORGE_FLICKR8K)", file=sys.stderr)
        return 0
    m = measure(args.quick, args.rounds)
    row = _row(m)
    text = json.dumps(row, indent=2)
    print(text)
    if args.json:
        write_atomic(args.json, text + "\n")
    ratio = f"{row['ratio']:.2f}×" if row["ratio"] else "— (peer missing)"
    body = (f"`python -m bench.convert_large`: {row['metric']}; {row['notes']}. {m['machine']['cpu']}, "
            f"{m['machine']['date']}. **clipforge {fmt(row['clipforge'])} vs img2dataset "
            f"{fmt(row['peer_value'])} images/s: {ratio}**.\n")
    print(body, file=sys.stderr)
    if not (args.quick or args.no_write):
        write_doc_section(REPO / "BENCHMARKS.md", "large-originals",
                          "Large originals: DCT-domain decode vs img2dataset", body)
    return 0


def run(quick: bool) -> dict:
    """bench.run_all's entry point: the row only."""
    if not ORIGINALS.is_dir():
        return result("convert_large", "img2dataset", "images/s on large originals", 0.0, None,
                      notes=f"skipped: {ORIGINALS} not found")
    return _row(measure(quick))


if __name__ == "__main__":
    raise SystemExit(main())
