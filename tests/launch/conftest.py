"""Fixtures for the launch tests: a real local slurm cluster (2 fake nodes) and a tiny shard dataset.

The cluster comes from ../shared/tools/local-slurm/start_local_slurm.sh (needs root); it is started
once per session and the stop script ALWAYS runs at the end, also when the start failed.
"""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .launch_helpers import REPO, clipforge

SLURM_TOOLS = Path(os.environ.get("CLIPFORGE_LOCAL_SLURM", REPO.parent / "shared" / "tools" / "local-slurm"))
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


@pytest.fixture(scope="session")
def slurm_cluster():
    """Two fake nodes node1, node2 (4 CPUs each) on this machine, for the whole session."""
    start, stop = SLURM_TOOLS / "start_local_slurm.sh", SLURM_TOOLS / "stop_local_slurm.sh"
    if not start.is_file() or not stop.is_file():
        pytest.skip(f"local slurm scripts not found in {SLURM_TOOLS} (set CLIPFORGE_LOCAL_SLURM to their folder)")
    if os.geteuid() != 0:
        pytest.skip("starting the local slurm cluster needs root (slurmd and munged run as root)")
    env = dict(os.environ, SLURM_FAKE_NODES="2", SLURM_NODE_CPUS="4")
    # a cluster left over from an interrupted session would make the start refuse: stop it by its pid files
    subprocess.run(["bash", str(stop)], env=env, capture_output=True, timeout=120)
    try:
        if shutil.which("sbatch") is None and shutil.which("apt-get"):
            # the start script installs slurm with apt-get; a fresh CI image has no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
        result = subprocess.run(["bash", str(start)], env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            pytest.fail(f"start_local_slurm.sh failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        yield
    finally:
        subprocess.run(["bash", str(stop)], env=env, capture_output=True, timeout=300)


def job_state(job_id: str) -> dict:
    """scontrol's fields of one job (works for 5 minutes after it ended, without accounting)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait_for_job(job_id: str, timeout: float = 300, until=lambda state: state["JobState"] in FINAL_STATES) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_state(job_id)
        if state and until(state):
            return state
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"slurm job {job_id} not done after {timeout} s: {job_state(job_id)}")


def submitted_job_ids(stdout: str):
    """Job ids from `clipforge launch slurm` output ('submitted ... job 12: ...')."""
    return [word for line in stdout.splitlines() if "submitted" in line
            for word in [line.split(" job ", 1)[1].split()[0].rstrip(":")]]


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory) -> Path:
    """48 + 8 synthetic scenes (images + captions.csv), the demo's generator."""
    from clipforge.data_pipeline.synthetic import make_synthetic_dataset
    return make_synthetic_dataset(str(tmp_path_factory.mktemp("raw")), num_train=48, num_val=8, size=48)


@pytest.fixture(scope="session")
def train_shards(raw_dataset, tmp_path_factory) -> Path:
    """The training split as shards (64 px, 16 per shard): what the trainer tests read."""
    out = tmp_path_factory.mktemp("shards") / "train"
    result = clipforge("convert", str(raw_dataset), "--format", "csv", "--out", str(out), "--image-size", "64",
                       "--resize-mode", "center_crop", "--samples-per-shard", "16", "--no-progress",
                       "--include-list", str(raw_dataset.parent / "splits" / "train.txt"), timeout=300)
    assert result.returncode == 0, result.stderr
    return out



STEPS = 24   # long enough for the preemption drill to stop in the middle; each run ~15 s + 24 tiny steps


@pytest.fixture(scope="session")
def tiny_run_config(train_shards, tmp_path_factory):
    """configs/demo-cpu.yaml (tiny ViT, DeepSpeed ZeRO-2 fp32 on CPU, 1 loader worker per rank) cut to test
    size: global batch 8, STEPS steps, loss logged every step, no periodic checkpoints or export."""
    import yaml
    cfg = yaml.safe_load((REPO / "configs" / "demo-cpu.yaml").read_text())
    assert cfg["deepspeed"]["zero_stage"] == 2 and cfg["data"]["workers"] >= 1
    cfg["model"]["name"] = str(REPO / cfg["model"]["name"])   # jobs run in the test's tmp dir
    cfg["data"].update(sources=[{"path": str(train_shards), "weight": 1.0}], shuffle_window=64)
    cfg["train"].update(epochs=None, steps=STEPS, global_batch_size=8, log_every=1)
    cfg["checkpoint"].update(every_steps=1000, every_minutes=600.0, export_at_end=False)
    path = tmp_path_factory.mktemp("configs") / "demo-tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def reference_run(tiny_run_config, tmp_path_factory) -> Path:
    """The uninterrupted 1 node x 2 processes `launch local` run everything else is compared with."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = clipforge("launch", "local", "--config", str(tiny_run_config), "--nproc", "2",
                       f"train.run_dir={run_dir}", timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


@pytest.fixture(scope="session")
def reference_losses(reference_run):
    from .launch_helpers import losses
    found = losses(reference_run)
    assert sorted(found) == list(range(1, STEPS + 1)), found
    return found


@pytest.fixture(scope="session")
def val_shards(raw_dataset, tmp_path_factory) -> Path:
    """The 8 held-out scenes (2 captions each) as shards, for eval."""
    out = tmp_path_factory.mktemp("shards") / "val"
    result = clipforge("convert", str(raw_dataset), "--format", "csv", "--out", str(out), "--image-size", "64",
                       "--resize-mode", "center_crop", "--no-progress",
                       "--include-list", str(raw_dataset.parent / "splits" / "val.txt"), timeout=300)
    assert result.returncode == 0, result.stderr
    return out
