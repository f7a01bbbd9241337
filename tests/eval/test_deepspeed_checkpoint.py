"""`--model` given a real DeepSpeed checkpoint (ZeRO-2 on 1 rank, ZeRO-3 on 2 ranks, saved by pretrain.engine
after one optimizer step) is consolidated on the fly and evaluates exactly like the same weights saved as model.pt;
`evaluate_retrieval` called on the live engine (the trainer's periodic eval) gives the same numbers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipforge.eval.cli import main

REPO = Path(__file__).resolve().parents[2]

# One process = a world of one; trains one step so the weights differ from any initialisation, saves the
# DeepSpeed checkpoint under RUN/checkpoints and (for reference) the gathered fp32 weights as REF.
MAKE_CHECKPOINT = r"""
import json, sys, torch, deepspeed
from pathlib import Path
from clipforge.modeling.config import load_config, save_config
from clipforge.pretrain.distributed import init_distributed
from clipforge.pretrain.engine import build_engine
from clipforge.modeling.model import build_model

run, stage, ref = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = load_config(sys.argv[4], [f"train.run_dir={run}", f"deepspeed.zero_stage={stage}"])
save_config(cfg, f"{run}/config.yaml")
torch.manual_seed(0)
bundle = build_model(cfg.model, cfg.loss)
engine, _ = build_engine(cfg, bundle.model, init_distributed("cpu"), 1)
images, tokens = torch.randn(4, 3, 64, 64), torch.randint(1, 400, (4, 32))
img, txt, scale, _ = engine(images, tokens)
loss = -(scale * (img * txt).sum(1)).mean()
engine.backward(loss)
engine.step()
engine.save_checkpoint(f"{run}/checkpoints", tag="step00000001")
# the trainer's periodic eval, straight on the engine (ZeRO-3: partitioned parameters)
from clipforge.eval.api import evaluate_retrieval
metrics = evaluate_retrieval(engine, bundle.tokenizer, bundle.preprocess_cfg, sys.argv[5], batch_size=16)
assert engine.module.training  # restored after the eval
if torch.distributed.get_rank() == 0:  # a file, not stdout: the other rank's prints can land mid-line
    Path(run, "metrics.json").write_text(json.dumps(metrics))
with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
    state = {k[len("clip."):]: v.detach().clone().float() for k, v in engine.module.state_dict().items()}
if torch.distributed.get_rank() == 0:
    torch.save(state, ref)
"""

CONFIG = """
model: {name: configs/models/tiny-vit.json}
data: {sources: [{path: unused}]}
train: {steps: 1, global_batch_size: 4, device: cpu}
optim: {lr: 0.01, grad_clip: 0.0}
deepspeed: {precision: fp32}
"""


def make_checkpoint(tmp_path, stage, nproc, shards):
    run = tmp_path / f"run-zero{stage}"
    run.mkdir()
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    (tmp_path / "make.py").write_text(MAKE_CHECKPOINT)
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    proc = subprocess.run(launcher + [str(tmp_path / "make.py"), str(run), str(stage), str(tmp_path / "ref.pt"),
                           str(tmp_path / "cfg.yaml"), str(shards)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, json.loads((run / "metrics.json").read_text())


def metrics(args, out):
    assert main([str(a) for a in args] + ["--out", str(out), "--quiet", "--batch-size", "16"]) == 0
    return json.loads(out.read_text())


@pytest.mark.multiprocess
@pytest.mark.parametrize("stage, nproc", [(2, 1), (3, 2)])
def test_deepspeed_checkpoint_evaluates_like_its_weights(eval_shards, tmp_path, stage, nproc):
    # ZeRO-3 on 2 ranks: the checkpoint holds real partitions, and the live engine's parameters are
    # partitioned (encode_* outside the engine's forward would see empty tensors without the gather)
    run, in_training = make_checkpoint(tmp_path, stage, nproc, eval_shards / "shards")
    data = ["--data", eval_shards / "shards", "--task", "retrieval"]
    ref = metrics(["--model", tmp_path / "ref.pt", "--model-config", "configs/models/tiny-vit.json"] + data,
                  tmp_path / "ref.json")
    ckpt = metrics(["--model", run / "checkpoints"] + data, tmp_path / "ckpt.json")  # config from RUN/config.yaml
    whole_run = metrics(["--model", run] + data, tmp_path / "run.json")  # no export/ or model.pt: latest checkpoint
    tag = metrics(["--model", run / "checkpoints" / "step00000001"] + data, tmp_path / "tag.json")
    assert ckpt["metrics"] == ref["metrics"] == whole_run["metrics"] == tag["metrics"]
    # the trainer's periodic eval on the live engine gives the same numbers as the CLI on its weights
    assert in_training == ref["metrics"]
    assert ckpt["pretrained"] == "deepspeed:latest" and tag["pretrained"] == "deepspeed:step00000001"


@pytest.mark.multiprocess
def test_quiet_silences_deepspeed_consolidation(eval_shards, tmp_path, capsys):
    run, _ = make_checkpoint(tmp_path, 2, 1, eval_shards / "shards")
    args = ["--model", run / "checkpoints", "--data", eval_shards / "shards", "--task", "retrieval", "--batch-size", "16"]
    assert main([str(a) for a in args]) == 0
    loud = capsys.readouterr()
    assert main([str(a) for a in args] + ["--quiet"]) == 0
    quiet = capsys.readouterr()
    assert "Processing zero checkpoint" in loud.out and "Loading checkpoint shards" in loud.err
    assert "checkpoint" not in quiet.out.replace(str(run / "checkpoints"), "") and quiet.err == ""
    assert quiet.out.splitlines()[0].startswith("clipforge eval: zeroshot_retrieval")
