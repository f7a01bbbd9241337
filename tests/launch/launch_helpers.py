"""Shared by the launch tests: run `clipforge launch` as a user would (a fresh interpreter), read losses."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / "configs" / "models" / "tiny-vit.json"


def clipforge(*args: str, cwd=None, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m clipforge.launch.cli ARGS` (= `clipforge ARGS`) with the repo importable from any cwd."""
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "clipforge.launch.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, run_dir: str, shards: str, steps: int = 3, batch: int = 8, **extra) -> Path:
    """A tiny run config (tiny ViT, fp32 ZeRO-2 on CPU) as YAML; extra: {"section": {key: value}}."""
    cfg = {
        "model": {"name": str(TINY_MODEL)},
        "data": {"sources": [{"path": shards, "weight": 1.0}], "mode": "epoch", "shuffle_window": 64, "workers": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "train": {"run_dir": run_dir, "seed": 0, "global_batch_size": batch, "steps": steps, "log_every": 1,
                  "device": "cpu"},
        "deepspeed": {"zero_stage": 2, "precision": "fp32"},
        "checkpoint": {"every_steps": 1000, "every_minutes": 600.0, "export_at_end": False},
    }
    for section, values in extra.items():
        cfg[section].update(values)
    path.write_text(json.dumps(cfg, indent=1))   # JSON is YAML
    return path


def marker_dataset(path: Path) -> str:
    """A folder that passes launch's path check (it has sizes.json) without being trainable: for tests of
    what launch does after its checks (scripts, sbatch), where no rank ever reads the data."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "sizes.json").write_text('{"shard-000000.tar": 8}')
    return str(path)


def losses(run_dir) -> Dict[int, float]:
    """step -> loss from RUN/metrics.jsonl (the last line per step wins: a resumed run repeats none)."""
    out = {}
    for line in Path(run_dir, "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and "step" in record:
            out[int(record["step"])] = float(record["loss"])
    return out


def tail(path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"<{err}>"

