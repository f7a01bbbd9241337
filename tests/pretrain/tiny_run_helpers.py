"""Test-side helpers for tests/pretrain/tiny_runs.py: start the child that runs the tiny trainings, read results."""
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def run_tiny(out: Path, runs: list, timeout: int = 600, nproc: int = 1) -> dict:
    """Run the trainings `runs` (tiny_runs.py's SPEC entries) one after another in one child process (nproc > 1:
    one torchrun of that many gloo ranks); returns {name: report} (exit code, checkpoint calls, vision token counts)."""
    spec = out / "spec.json"
    spec.write_text(json.dumps({"out": str(out), "runs": runs}))
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    proc = subprocess.run([sys.executable, *torchrun, str(HERE / "tiny_runs.py"), str(spec)], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    (out / "tiny_runs.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"tiny_runs.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return {r["name"]: json.loads((out / f"{r['name']}.json").read_text()) for r in runs}


def rows(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list:
    return [r["loss"] for r in rows(run_dir)]


def checkpoint_tags(run_dir: Path) -> list:
    return sorted(n for n in os.listdir(run_dir / "checkpoints") if n.startswith("step"))
