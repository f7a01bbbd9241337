"""Helpers shared by the bench/ scripts: timing, peak-memory measurement, machine info, markdown.

Every benchmark module exposes `run(quick: bool) -> dict` (see `result()` for the keys) and ends with

    if __name__ == "__main__":
        raise SystemExit(cli(run))

`bench.run_all` runs each module in its own process, so a module's peak RSS is its own.
Torch-free on purpose: importing this costs nothing in a benchmark's measured region.
"""
import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import statistics
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from clipforge.atomic import write_atomic  # noqa: F401  (bench scripts import it from here)

RESULT_KEYS = ("name", "peer", "metric", "clipforge", "peer_value", "ratio", "notes")


def result(name: str, peer: str, metric: str, clipforge: float, peer_value: Optional[float],
           notes: str = "", higher_is_better: bool = True) -> Dict:
    """One row of BENCHMARKS.md. `ratio` is always 'how many times better clipforge is':
    clipforge/peer for throughputs, peer/clipforge for times and memory (higher_is_better=False).
    peer_value None (the peer cannot run, e.g. naive loss out of memory) gives ratio None."""
    ratio = None
    if peer_value is not None and clipforge:
        ratio = clipforge / peer_value if higher_is_better else peer_value / clipforge
    return {"name": name, "peer": peer, "metric": metric, "clipforge": clipforge,
            "peer_value": peer_value, "ratio": ratio, "notes": notes}


# ---------------------------------------------------------------- timing
def time_calls(fn: Callable[[], object], repeat: int = 5, warmup: int = 1,
               sync: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """Wall-clock seconds of `fn()`: best, median and all `repeat` runs after `warmup` runs.
    `sync` (e.g. torch.cuda.synchronize) is called before each clock read so async work counts."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return {"best": min(times), "median": statistics.median(times), "runs": times}


# ---------------------------------------------------------------- memory
_HWM = re.compile(r"^VmHWM:\s+(\d+) kB", re.M)
_RSS = re.compile(r"^VmRSS:\s+(\d+) kB", re.M)


def _status_kb(pattern) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            m = pattern.search(f.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def rss_bytes() -> int:
    """Current resident set size of this process."""
    kb = _status_kb(_RSS)
    if kb is None:  # not Linux: psutil is in the venv
        import psutil
        return psutil.Process().memory_info().rss
    return kb * 1024


class PeakRSS:
    """Peak RSS of this process over a `with` block, and the extra over the RSS at entry.

        with PeakRSS() as mem:
            loss = tiled_loss(img, txt)           # whatever allocates
        mem.peak, mem.extra                       # bytes

    On Linux the kernel's high-water mark is reset at entry (/proc/self/clear_refs = 5), so the
    peak is exact even for allocations shorter than any sampling interval. Elsewhere (or if the
    reset is refused) a thread samples RSS every `interval` s, which can miss short spikes.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.start = self.peak = self.extra = 0
        self._exact = False
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.start = rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._exact = _status_kb(_HWM) is not None
        except OSError:
            self._exact = False
        if not self._exact:
            self.peak = self.start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self._exact:
            self.peak = _status_kb(_HWM) * 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        self.extra = max(0, self.peak - self.start)
        return False


def max_rss_bytes() -> int:
    """Peak RSS of the whole process life so far (getrusage; kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def children_max_rss_bytes() -> int:
    """Largest peak RSS among waited-for child processes (e.g. a peer run via subprocess)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


# ---------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The vector ISA that decides a CPU's training speed and bf16 numerics: the same bf16 recipe ran 21 min on one
    2-core EPYC and 30 on another, and landed 1.3 test points apart on an AMX Xeon (docs/flickr8k.md)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return "AMX-BF16" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else \
        "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"


def machine_info() -> Dict[str, object]:
    """What a reader needs to compare figures: CPU model, usable cores, memory, versions, date."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = None
    return {
        "cpu": cpu_model(),
        "cores": usable,
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(mem_gib, 1) if mem_gib else None,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ---------------------------------------------------------------- markdown
def fmt(x) -> str:
    """Numbers for tables: 3 significant digits, thousands separators, '—' for None."""
    if x is None:
        return "—"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x != x:  # NaN
        return "nan"
    if isinstance(x, int) or (abs(x) >= 100 and float(x).is_integer()):
        return f"{int(x):,}"
    if abs(x) >= 100:  # 3 digits are all integer digits (and 999.5 must not become '1e+03')
        return f"{x:,.0f}"
    return f"{x:.3g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v):
        return fmt(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def section(text: str, name: str) -> Optional[str]:
    """The body between `<!-- name:begin -->` and `<!-- name:end -->` in text, or None."""
    m = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, re.S)
    return m.group(1) if m else None


def write_doc_section(path, name: str, heading: str, body: str) -> None:
    """A benchmark's own part of a markdown file (BENCHMARKS.md, RESULTS.md): its marked section rewritten,
    added the first time under `## heading`; the rest of the file untouched."""
    text = open(path).read() if os.path.exists(path) else ""
    if section(text, name) is None:
        text = f"{text.rstrip()}\n\n## {heading}\n"
    write_atomic(str(path), with_section(text, name, body))


def with_section(text: str, name: str, body: str) -> str:
    """text with the named section's body replaced (appended at the end when absent)."""
    block = f"<!-- {name}:begin -->\n{body.rstrip()}\n<!-- {name}:end -->"
    if section(text, name) is None:
        return text.rstrip() + "\n\n" + block + "\n"
    return re.sub(rf"<!-- {name}:begin -->\n.*?<!-- {name}:end -->", lambda _: block, text,
                  count=1, flags=re.S)


# ---------------------------------------------------------------- command line
def cli(run: Callable[[bool], object], argv: Optional[List[str]] = None) -> int:
    """`python -m bench.X [--quick] [--json FILE]`: run, print the row(s) as JSON (and save)."""
    ap = argparse.ArgumentParser(description=(run.__module__ or "benchmark"))
    ap.add_argument("--quick", action="store_true", help="small sizes, for CI smoke (seconds)")
    ap.add_argument("--json", metavar="FILE", help="also write the result JSON here")
    args = ap.parse_args(argv)
    out = run(args.quick)
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.json:
        write_atomic(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    json.dump(machine_info(), sys.stdout, indent=2)
    print()
