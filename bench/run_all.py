"""Run every benchmark, each in its own process, and rewrite BENCHMARKS.md.

    python -m bench.run_all            # full sizes -> BENCHMARKS.md        (make bench)
    python -m bench.run_all --quick    # CI smoke  -> runs/bench/BENCHMARKS-quick.md (make bench-quick)
    python -m bench.run_all --only loss,loader --out /tmp/B.md

One process per benchmark so that (1) a benchmark that crashes, hangs or is not written yet
becomes a row saying so instead of stopping the rest, and (2) each one's peak RSS is its own,
not inflated by what an earlier benchmark left allocated. Quick figures are smoke, not claims,
so --quick never overwrites BENCHMARKS.md unless --out says so. The GPU section (written by
`python -m bench.gpu` on a CUDA machine) is carried over unchanged.
"""
import argparse
import importlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from bench.common import RESULT_KEYS, machine_info, markdown_table, section, with_section, write_atomic

REPO = Path(__file__).resolve().parents[1]
# The list, in table order: converter (local files, URLs, large originals), loader, trainer overhead +
# ZeRO memory, eval, loss.
EXPECTED = ["convert", "convert_urls", "convert_large", "loader", "trainer", "eval", "loss"]
# Modules in bench/ that are not benchmarks run here (gpu needs CUDA and writes its own section).
NOT_BENCHMARKS = {"__init__", "__main__", "common", "run_all", "gpu", "sizing"}
CPU_ENV = {"HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
OWN_HEADINGS = {"## Results", "## Runs"}  # what render() writes itself
GPU_PLACEHOLDER = ("No GPU figures yet: none measured (bench/gpu.py's logic is tested on CPU). On a CUDA "
                   "machine run `python -m bench.gpu`; it rewrites this section only.\n")


def discover() -> List[str]:
    """EXPECTED first (present or not: a missing one is reported), then any other bench module
    that defines run()."""
    extra = sorted(p.stem for p in (REPO / "bench").glob("*.py")
                   if p.stem not in NOT_BENCHMARKS and p.stem not in EXPECTED
                   and re.search(r"^def run\(", p.read_text(), re.M))  # helpers are not benchmarks
    return EXPECTED + extra


def run_one(name: str, quick: bool, json_path: str) -> int:
    """Child side: import bench.<name>, run it, write {"rows": [...], "max_rss": bytes}."""
    mod = importlib.import_module(f"bench.{name}")
    out = mod.run(quick)
    rows = out if isinstance(out, list) else [out]
    ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    payload = {"rows": rows, "max_rss": max(ru_self, ru_kids) * 1024}
    with open(json_path, "w") as f:
        json.dump(payload, f, default=str)
    return 0


def _bad_row(row) -> Optional[str]:
    if not isinstance(row, dict):
        return f"returned {type(row).__name__}, not a dict"
    missing = [k for k in RESULT_KEYS if k not in row]
    if missing:
        return f"result lacks keys {missing}"
    if not isinstance(row["clipforge"], (int, float)):
        return f"clipforge value {row['clipforge']!r} is not a number"
    return None


def _cause(log_path: Path) -> str:
    """The log's last error-looking line (a torchrun banner's last line says nothing), else its last."""
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"Error|Exception|Signal \d+|Killed|Traceback", ln)]
    return ((errors or lines or ["no output"])[-1])[:200]


def kept(name: str, log_dir: Path) -> Optional[Dict]:
    """The result of an earlier run of this benchmark (same mode), marked as such, if there is one."""
    path = log_dir / f"{name}.json"
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))
    return {"name": name, "status": f"ok (kept from the run of {when})", "seconds": None,
            "max_rss": payload["max_rss"], "rows": payload["rows"], "log": None}


def launch(name: str, quick: bool, timeout: float, log_dir: Path) -> Dict:
    """Parent side: run one benchmark in a child process; always returns a status record."""
    rec = {"name": name, "status": "ok", "seconds": None, "max_rss": None, "rows": [], "log": None}
    if not (REPO / "bench" / f"{name}.py").is_file():
        rec["status"] = f"missing: bench/{name}.py does not exist yet"
        return rec
    log_dir.mkdir(parents=True, exist_ok=True)
    json_path, log_path = log_dir / f"{name}.json", log_dir / f"{name}.log"
    json_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.run_all", "--one", name, "--json", str(json_path)]
    if quick:
        cmd.append("--quick")
    env = {**CPU_ENV, **os.environ}  # the caller's settings win (e.g. on a GPU node)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    shown = os.path.relpath(log_path, REPO)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = None
    rec["seconds"], rec["log"] = time.perf_counter() - t0, shown
    if rc is None:
        rec["status"] = f"failed: timed out after {timeout:.0f} s (log: {shown})"
        return rec
    if rc != 0 or not json_path.is_file():
        rec["status"] = f"failed: exit {rc}: {_cause(log_path)} (log: {shown})"
        return rec
    payload = json.loads(json_path.read_text())
    rec["max_rss"] = payload["max_rss"]
    problems = [p for p in map(_bad_row, payload["rows"]) if p]
    if problems:
        rec["status"] = f"failed: {problems[0]}"
    else:
        rec["rows"] = payload["rows"]
    return rec


def carried(text: str) -> str:
    """The `## ...` parts of an earlier BENCHMARKS.md that this run does not write, verbatim with their prose:
    each holds a marked section its own tool rewrites (gpu: bench.gpu on a CUDA machine; learning: make
    bench-learning, hours; eval-suite, downloads, large-originals: their benches)."""
    parts = re.split(r"(?m)^(?=## )", text)
    return "".join(part.rstrip() + "\n\n" for part in parts[1:]
                   if part.splitlines()[0] not in OWN_HEADINGS and "<!-- " in part).rstrip() + "\n"


def render(records: List[Dict], quick: bool, info: Dict, earlier: str) -> str:
    mode = "quick (CI smoke: tiny sizes, figures are not claims)" if quick else "full"
    rows = [[r["name"], r["metric"], r["clipforge"], r["peer"], r["peer_value"],
             f"{r['ratio']:.2f}×" if isinstance(r["ratio"], (int, float)) else r["ratio"], r["notes"]]
            for rec in records for r in rec["rows"]]
    runs = [[rec["name"], rec["status"], rec["seconds"],
             None if rec["max_rss"] is None else rec["max_rss"] / 2**20] for rec in records]
    torch_v = info.get("torch", "not installed")
    return (
        "# clipforge benchmarks\n\n"
        "Rewritten by `make bench` (`python -m bench.run_all`); do not edit by hand. Every figure is "
        "measured in the same run as its peer, on the machine below. **ratio** = how many times "
        "better clipforge is (peer/clipforge for times and memory, clipforge/peer for throughput); "
        "— means the peer could not run. Each benchmark is `bench/<name>.py` (`--quick` for CI).\n\n"
        f"- machine: {info['cpu']}, {info['cores']} cores usable ({info['logical_cpus']} logical), "
        f"{info['memory_gib']} GiB RAM, {info['os']}\n"
        f"- software: Python {info['python']}, torch {torch_v}\n"
        f"- date: {info['date']}; mode: {mode}\n\n"
        "## Results\n\n"
        + markdown_table(["benchmark", "what is measured", "clipforge", "peer", "peer value",
                          "ratio", "notes"], rows)
        + "\n## Runs\n\nEach benchmark ran in its own process; peak RSS is that process's "
          "(and its children's) high-water mark.\n\n"
        + markdown_table(["benchmark", "status", "seconds", "peak RSS MiB"], runs)
        + ("" if section(earlier, "gpu") is not None
           else "\n## GPU\n\n" + with_section("", "gpu", GPU_PLACEHOLDER).lstrip())
        + "\n" + carried(earlier)
    )


def _torch_version() -> str:
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                             capture_output=True, text=True, timeout=120)
        return out.stdout.strip() or "not installed"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes for CI smoke")
    ap.add_argument("--only", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--out", help="markdown to rewrite (default BENCHMARKS.md; "
                                  "runs/bench/BENCHMARKS-quick.md with --quick)")
    ap.add_argument("--timeout", type=float, help="seconds per benchmark (default 1800; 300 quick)")
    ap.add_argument("--keep-others", action="store_true",
                    help="with --only: also list the other benchmarks' results of their last run "
                         "(runs/bench/), each marked with its date")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 when any benchmark is missing or failed (default: report and go on)")
    ap.add_argument("--one", help=argparse.SUPPRESS)   # child mode, used by launch()
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return run_one(args.one, args.quick, args.json)

    names = args.only.split(",") if args.only else discover()
    out = Path(args.out) if args.out else REPO / ("runs/bench/BENCHMARKS-quick.md" if args.quick
                                                 else "BENCHMARKS.md")
    timeout = args.timeout or (300.0 if args.quick else 1800.0)
    log_dir = REPO / "runs" / "bench" / ("quick" if args.quick else "full")
    records = []
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        rec = launch(name.strip(), args.quick, timeout, log_dir)
        print(f"[bench] {name}: {rec['status']}" + (f" ({rec['seconds']:.1f} s)" if rec["seconds"] else ""),
              flush=True)
        records.append(rec)
    if args.only and args.keep_others:
        ran = {rec["name"] for rec in records}
        old = [kept(n, log_dir) for n in discover() if n not in ran]
        records += [rec for rec in old if rec]
        order = {n: i for i, n in enumerate(discover())}
        records.sort(key=lambda rec: order.get(rec["name"], len(order)))
    info = machine_info()
    info["torch"] = _torch_version()
    # Sections written by other tools (GPU figures from another machine, learning from `make bench-learning`,
    # hours; benches that write their own) are kept as they are, from the target, else BENCHMARKS.md.
    earlier = next((src.read_text() for src in (out, REPO / "BENCHMARKS.md")
                    if src.is_file() and carried(src.read_text()).strip()), "")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(out), render(records, args.quick, info, earlier))
    ok = sum(rec["status"].startswith("ok") for rec in records)
    print(f"[bench] {ok}/{len(records)} benchmarks ran; wrote {out}")
    return 1 if args.strict and ok < len(records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
