"""`clipforge eval --model RUN --all-checkpoints` (eval/curve.py): every kept DeepSpeed checkpoint of a run
evaluated into curve.csv / curve.png, each point equal to evaluating that checkpoint alone; without --data,
the trainer's periodic eval JSONs (both layouts) drawn as they are."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from clipforge.eval.cli import main

REPO = Path(__file__).resolve().parents[2]

# A world of one, two optimizer steps, a DeepSpeed checkpoint after each (RUN/checkpoints/stepN).
TWO_CHECKPOINTS = r"""
import sys, torch
from clipforge.modeling.config import load_config, save_config
from clipforge.pretrain.distributed import init_distributed
from clipforge.pretrain.engine import build_engine
from clipforge.modeling.model import build_model

run, config = sys.argv[1], sys.argv[2]
cfg = load_config(config, [f"train.run_dir={run}"])
save_config(cfg, f"{run}/config.yaml")
torch.manual_seed(0)
bundle = build_model(cfg.model, cfg.loss)
engine, _ = build_engine(cfg, bundle.model, init_distributed("cpu"), 1)
for step in (1, 2):
    images, tokens = torch.randn(4, 3, 64, 64), torch.randint(1, 400, (4, 32))
    img, txt, scale, _ = engine(images, tokens)
    engine.backward(-(scale * (img * txt).sum(1)).mean())
    engine.step()
    engine.save_checkpoint(f"{run}/checkpoints", tag=f"step{step:08d}")
"""

CONFIG = """
model: {name: configs/models/tiny-vit.json}
data: {sources: [{path: unused}]}
train: {steps: 2, global_batch_size: 4, device: cpu}
optim: {lr: 0.05, grad_clip: 0.0}
deepspeed: {precision: fp32, zero_stage: 2}
"""


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_kept_checkpoint_is_one_point_equal_to_evaluating_it_alone(tmp_path, eval_shards):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    (tmp_path / "make.py").write_text(TWO_CHECKPOINTS)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, str(tmp_path / "make.py"), str(run), str(tmp_path / "cfg.yaml")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    common = ["--data", str(eval_shards / "shards"), "--task", "retrieval", "--quiet", "--batch-size", "16"]
    assert main(["--model", str(run), "--all-checkpoints", "--out-dir", str(tmp_path / "curve")] + common) == 0
    rows = _rows(tmp_path / "curve" / "curve.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert (tmp_path / "curve" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    alone = {}
    for step in (1, 2):
        out = tmp_path / f"alone{step}.json"
        assert main(["--model", str(run / "checkpoints" / f"step{step:08d}"), "--out", str(out)] + common) == 0
        alone[step] = json.loads(out.read_text())["metrics"]
        point = json.loads((tmp_path / "curve" / f"step{step:08d}.json").read_text())["metrics"]
        assert point == alone[step]
        assert float(rows[step - 1]["mean_recall@10"]) == alone[step]["mean_recall@10"]
    # each point loaded its own checkpoint (the tiny model's recall may be equal at both)
    assert [json.loads((tmp_path / "curve" / f"step{s:08d}.json").read_text())["pretrained"] for s in (1, 2)] == \
        ["deepspeed:step00000001", "deepspeed:step00000002"]


def test_without_data_the_periodic_eval_is_drawn_in_both_layouts(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "step00000010.json").write_text(json.dumps(  # written before 2026-12-02
        {"step": 10, "dataset": "dev", "metrics": {"mean_recall@10": 0.25}, "chance": {}}))
    (run / "eval" / "step00000020.json").write_text(json.dumps(  # `clipforge eval --out`'s layout
        {"dataset": "dev", "model": "m", "pretrained": "training step 20", "task": "zeroshot_retrieval",
         "metrics": {"mean_recall@10": 0.5}, "language": "en", "clipforge": {"step": 20, "chance": {}}}))
    (run / "eval" / "test.json").write_text(json.dumps({"metrics": {"mean_recall@10": 0.9}}))  # not a step
    assert main(["--model", str(run), "--all-checkpoints"]) == 0
    rows = _rows(run / "eval" / "curve" / "curve.csv")
    assert [(int(r["step"]), float(r["mean_recall@10"])) for r in rows] == [(10, 0.25), (20, 0.5)]


def test_all_checkpoints_of_something_that_is_not_a_run_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    try:
        main(["--model", str(tmp_path / "empty"), "--all-checkpoints"])
    except SystemExit as stop:
        assert stop.code == 2
    assert "is not a run dir" in capsys.readouterr().err
