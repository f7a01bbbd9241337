"""`python -m clipforge.pretrain` under torchrun on real shards (converter + streaming loader), 2 gloo ranks:
the run dir's outputs, periodic eval, and a real SIGTERM to torchrun -> checkpoint -> `--resume latest`
continues with the losses of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .synthetic_shards import synthetic_shards

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return synthetic_shards(tmp_path_factory.mktemp("data"), num_val=16)


def _config(tmp: Path, shards: Path, name: str, steps: int, workers: int = 1) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"""
model: {{name: {REPO / 'configs/models/tiny-vit.json'}}}
data: {{sources: [{{path: {shards / 'train'}}}], workers: {workers}, val_path: {shards / 'val'}}}
optim: {{lr: 1.0e-3, warmup_steps: 2}}
train: {{run_dir: {tmp / name}, global_batch_size: 16, steps: {steps}, log_every: 1, device: cpu}}
deepspeed: {{zero_stage: 2, precision: fp32}}
checkpoint: {{every_steps: 4, keep_last: 2}}
eval: {{every_steps: 3, batch_size: 16}}
""")
    return path


def _torchrun(config: Path, *extra: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "clipforge.pretrain",
           "--config", str(config), *extra]
    return subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def _losses(run_dir: Path) -> list:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_cli_run_outputs_eval_and_sigterm_resume(shards, tmp_path):
    full = _torchrun(_config(tmp_path, shards, "full", 9))
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out[-5000:]
    run = tmp_path / "full"
    for name in ("config.yaml", "deepspeed.json", "loss.png", "model.pt", "export/open_clip_config.json",
                 "export/open_clip_model.safetensors", "eval/step00000003.json", "eval/step00000009.json"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 10))
    assert len(rows[0]["samples_per_s_per_rank"]) == 2 and 0 <= rows[0]["data_wait_fraction"] <= 1
    tags = sorted(n for n in os.listdir(run / "checkpoints") if n.startswith(("step", ".tmp")))
    assert tags == ["step00000008", "step00000009"]  # keep_last=2, no temporaries left
    assert (run / "checkpoints" / "latest").read_text() == "step00000009"
    assert "image_retrieval_recall@1" in json.loads((run / "eval/step00000009.json").read_text())["metrics"]

    # The whole process group is signalled, as slurm and a shell's Ctrl-C do: the loader's workers get
    # SIGTERM too (torch's DataLoader worker dies of it unless the loader makes it ignore the signal),
    # and the run must still checkpoint. workers=2 here vs 1 in the full run: the batch sequence does
    # not depend on the worker count, so the losses must still equal the full run's.
    cut_config = _config(tmp_path, shards, "cut", 9, workers=2)
    cut = _torchrun(cut_config)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    os.killpg(cut.pid, signal.SIGTERM)  # torchrun, both ranks and their loader workers
    out, _ = cut.communicate(timeout=300)
    assert "preempted: checkpoint step" in out, out[-5000:]
    tag = (tmp_path / "cut" / "checkpoints" / "latest").read_text()
    assert 2 <= int(tag[4:]) < 9
    resumed = _torchrun(cut_config, "--resume", "latest")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-5000:]
    assert f"resumed from {tmp_path / 'cut' / 'checkpoints' / tag}" in out
    # Lines logged after the checkpoint and before the kill are logged again by the resumed run.
    cut_losses = {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        cut_losses[row["step"]] = row["loss"]
    assert [cut_losses[s] for s in range(1, 10)] == _losses(run)
