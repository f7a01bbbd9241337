"""`eval.ema`: the periodic eval also scores the model EMA, on 2 gloo ranks under DeepSpeed. Each
RUN/eval-ema/stepN.json must equal `clipforge eval` of the EMA export (RUN/export-ema/) at the last step, as
RUN/eval/stepN.json equals that of RUN/export/; at ZeRO-2 bf16 (the forward reads bf16 working copies,
not the fp32 masters the EMA averages) and ZeRO-3 fp32 (partitioned masters)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipforge.pretrain.checkpoint import tag_for

from .synthetic_shards import synthetic_shards

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
STEPS, EVERY = 6, 3

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return synthetic_shards(tmp_path_factory.mktemp("data"), num_val=32)


def _train(tmp: Path, shards: Path, stage: int, precision: str) -> Path:
    run_dir = tmp / f"z{stage}_{precision}"
    config = tmp / f"z{stage}_{precision}.yaml"
    config.write_text(f"""
model: {{name: {REPO / 'configs/models/tiny-vit.json'}, ema_decay: 0.5}}
data: {{sources: [{{path: {shards / 'train'}}}], workers: 0, val_path: {shards / 'val'}}}
optim: {{lr: 2.0e-3, warmup_steps: 1}}
train: {{run_dir: {run_dir}, global_batch_size: 16, steps: {STEPS}, log_every: 1, device: cpu}}
deepspeed: {{zero_stage: {stage}, precision: {precision}}}
checkpoint: {{every_steps: 100}}
eval: {{every_steps: {EVERY}, batch_size: 8, ema: true}}
""")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "clipforge.pretrain",
           "--config", str(config)]
    done = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "eval EMA step 3:" in done.stderr
    return run_dir


def _scored(model: Path, shards: Path, precision: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "clipforge.eval", "--model", str(model), "--data", str(shards / "val"), "--task", "retrieval",
           "--batch-size", "8", "--precision", precision, "--quiet", "--out", str(out)]
    done = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(out.read_text())["metrics"]


def _metrics(run_dir: Path, folder: str, step: int) -> dict:
    return json.loads((run_dir / folder / f"{tag_for(step)}.json").read_text())["metrics"]


@pytest.mark.parametrize("stage,precision", [(2, "bf16"), (3, "fp32")])
def test_periodic_eval_scores_the_ema_weights(shards, tmp_path, stage, precision):
    run_dir = _train(tmp_path, shards, stage, precision)
    assert sorted(p.name for p in (run_dir / "eval-ema").iterdir()) == [f"{tag_for(EVERY)}.json", f"{tag_for(STEPS)}.json"]
    live, ema = _metrics(run_dir, "eval", STEPS), _metrics(run_dir, "eval-ema", STEPS)
    assert set(ema) == set(live)
    assert ema != live  # decay 0.5: the average lags the live weights enough to rank the 32 pairs differently
    assert ema == pytest.approx(_scored(run_dir / "export-ema", shards, precision, tmp_path / "ema.json"), abs=1e-6)
    if precision == "fp32":  # a bf16 run's live eval reads its bf16 weights, the export their fp32 masters
        assert live == pytest.approx(_scored(run_dir / "export", shards, precision, tmp_path / "live.json"), abs=1e-6)
