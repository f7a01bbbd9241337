"""A 10-task eval suite on the bundled data, 1 rank vs 2 ranks: wall time and the largest process's peak RSS.

    python -m bench.eval_suite [--quick] [--out runs/bench-eval-suite] [--no-write]

The tasks: configs/eval/demo.yaml's eight (demo retrieval, shape/colour zero-shot and probes, Flickr8k test
retrieval, digits zero-shot and probe) plus Flickr8k dev retrieval and retrieval over the demo's training
shards. Data: `clipforge demo` (whose trained model is also the model evaluated unless the Flickr8k
from-scratch recipe's export runs/flickr8k/scratch exists), scikit-learn's digits (python -m
clipforge.data_pipeline.digits) and the Flickr8k shards of `make flickr8k` when present (else those tasks are skipped,
as the suite marks them). Each configuration runs as its own process tree (`python -m clipforge.eval --suite`, under
torch.distributed.run for 2 ranks); the 2-rank summary must equal the 1-rank one, or the bench fails.
Writes the table into BENCHMARKS.md ("Eval suite") unless --quick or --no-write.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from bench.common import machine_info, markdown_table, write_atomic, write_doc_section

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
           PYTHONPATH=str(REPO))
EXTRA_TASKS = [
    {"name": "flickr8k-dev-retrieval", "task": "retrieval", "data": "flickr8k/shards-dev", "dataset": "flickr8k-dev",
     "recall_k": [1, 5, 10], "metric": "mean_recall@10", "skip_if_missing": "make flickr8k writes it"},
    {"name": "demo-train-retrieval", "task": "retrieval", "data": "demo/shards-train", "recall_k": [1, 5, 10]},
]
# A child that runs one command and reports its wall time and the peak RSS of the largest process of its tree
# (getrusage's children figure covers every waited-for descendant: torchrun's ranks included).
TIMED = ("import resource, subprocess, sys, time; t = time.time(); rc = subprocess.run(sys.argv[1:]).returncode; "
         "print(time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, rc)")


def prepare(out: Path, quick: bool) -> Path:
    """-> the suite's data root (demo/, digits/, flickr8k/ -> runs/flickr8k when there)."""
    root = out / "data"
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "demo" / "run" / "export").is_dir():
        size = ["--train-images", "160", "--val-images", "8", "train.steps=2"] if quick else \
            ["--train-images", "1000", "--val-images", "500"]
        subprocess.run([PY, "-m", "clipforge.launch.cli", "demo", "--out", str(root / "demo"), "--nproc", "1", *size],
                       cwd=REPO, env=ENV, check=True, capture_output=True)
    if not (root / "digits").is_dir():
        subprocess.run([PY, "-m", "clipforge.data_pipeline.digits", str(root / "digits")], cwd=REPO, env=ENV, check=True,
                       capture_output=True)
    flickr = REPO / "runs" / "flickr8k"
    if not quick and (flickr / "shards-test").is_dir() and not (root / "flickr8k").exists():
        (root / "flickr8k").symlink_to(flickr)
    return root


def run_suite(suite: Path, model: Path, out_dir: Path, nproc: int) -> dict:
    launcher = [PY, "-m"] if nproc == 1 else [PY, "-m", "torch.distributed.run", "--standalone",
                                              f"--nproc_per_node={nproc}", "-m"]
    cmd = launcher + ["eval", "--suite", str(suite), "--model", str(model), "--out-dir", str(out_dir), "--quiet"]
    proc = subprocess.run([PY, "-c", TIMED, *cmd], cwd=REPO, env=ENV, capture_output=True, text=True)
    wall, rss, rc = proc.stdout.split()[-3:]
    if int(rc) != 0:
        raise SystemExit(f"bench.eval_suite: {nproc} rank(s) failed:\n{proc.stderr[-3000:]}")
    return {"ranks": nproc, "wall_s": float(wall), "peak_rss_bytes": int(rss),
            "summary": (out_dir / "summary.csv").read_text()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.eval_suite", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny data (a demo of 160 scenes, no Flickr8k)")
    ap.add_argument("--out", default=None, help="work folder (default runs/bench-eval-suite[-quick])")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    out = Path(args.out or REPO / "runs" / ("bench-eval-suite-quick" if args.quick else "bench-eval-suite")).resolve()
    root = prepare(out, args.quick)
    suite = yaml.safe_load((REPO / "configs" / "eval" / "demo.yaml").read_text())
    suite.update(root=str(root), out_dir=str(out / "results"), tasks=suite["tasks"] + EXTRA_TASKS)
    write_atomic(str(out / "suite.yaml"), yaml.safe_dump(suite, sort_keys=False))
    recipe = REPO / "runs" / "flickr8k" / "scratch"
    model = recipe if (recipe / "export").is_dir() and not args.quick else root / "demo" / "run"
    runs = [run_suite(out / "suite.yaml", model, out / f"results-{n}rank", n) for n in (1, 2)]
    if runs[0]["summary"] != runs[1]["summary"]:
        raise SystemExit("bench.eval_suite: the 2-rank summary differs from the 1-rank one")
    ran = [line for line in runs[0]["summary"].splitlines()[1:]  # task rows (not the average) that ran
           if line.strip() and not line.startswith("average,") and not line.endswith(",skipped")]
    rows = [[r["ranks"], f"{r['wall_s']:.1f}", f"{runs[0]['wall_s'] / r['wall_s']:.2f}x",
             f"{r['peak_rss_bytes'] / 2**30:.2f}"] for r in runs]
    body = (f"{len(suite['tasks'])} tasks ({len(ran)} ran), model "
            f"`{model.relative_to(REPO) if model.is_relative_to(REPO) else model}`, `python -m bench.eval_suite`; "
            f"{machine_info()['cpu']}, {machine_info()['cores']} cores, {machine_info()['date']}. The 2-rank "
            f"summary equals the 1-rank one. Wall time: the whole process tree (start-up, model load, every "
            f"task's data decode and embedding); peak RSS: the largest single process.\n\n"
            + markdown_table(["ranks", "wall (s)", "speed-up", "peak RSS (GiB)"], rows) + "\n")
    write_atomic(str(out / "eval_suite.json"), json.dumps({"runs": runs, "tasks": len(suite["tasks"])}, indent=1))
    print(body)
    if not (args.quick or args.no_write):
        write_doc_section(REPO / "BENCHMARKS.md", "eval-suite",
                          "Eval suite: 10 tasks, 1 rank vs 2", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
