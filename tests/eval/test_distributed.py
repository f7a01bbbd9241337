"""2 ranks (torchrun, gloo) give exactly the numbers of 1 rank: each rank embeds its share of the batches,
image embeddings are gathered, each rank ranks its own captions, integer counts are summed. Also a rank
with no batch at all (fewer batches than ranks) must not hang."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_eval(nproc, args, out):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if nproc == 1:
        cmd = [sys.executable, "-m", "clipforge.eval"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "clipforge.eval"]
    proc = subprocess.run(cmd + [str(a) for a in args] + ["--out", str(out), "--quiet"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.multiprocess
def test_two_ranks_equal_one_rank(eval_shards, tiny_model, tmp_path):
    root, _ = tiny_model
    common = ["--model", root / "export", "--data", eval_shards / "shards"]
    # 40 samples in batches of 16: rank 0 embeds 1 batch, rank 1 two (the last one short)
    retrieval = common + ["--task", "retrieval", "--batch-size", "16", "--recall-k", "1,2,5,10"]
    one, _ = run_eval(1, retrieval, tmp_path / "r1.json")
    two, stdout = run_eval(2, retrieval, tmp_path / "r2.json")
    assert two["metrics"] == one["metrics"]
    assert two["clipforge"]["counts"] == one["clipforge"]["counts"] == {"images": 40, "captions": 80}
    assert two["clipforge"]["world_size"] == 2 and stdout.count("wrote ") == 1  # rank 0 writes

    classification = common + ["--task", "classification", "--label-key", "color", "--batch-size", "64"]
    # one batch of 64 > 40 samples: rank 1 has nothing to embed and still joins every collective
    one, _ = run_eval(1, classification, tmp_path / "c1.json")
    two, _ = run_eval(2, classification, tmp_path / "c2.json")
    assert two["metrics"] == one["metrics"]
    assert two["clipforge"]["counts"] == {"images": 40, "classes": 6}


@pytest.mark.multiprocess
def test_two_rank_suite_equals_one_rank(eval_shards, tiny_model, tmp_path):
    """Every task of a suite under 2 ranks (linear probe features gathered from both) = 1 rank."""
    root, _ = tiny_model
    (tmp_path / "s.yaml").write_text(
        f"root: {eval_shards}\ntasks:\n"
        "  - {name: r, task: retrieval, data: shards}\n"
        "  - {name: c, task: classification, data: shards, label_key: color, templates: simple}\n"
        "  - {name: p, task: linear_probe, data: shards, train_data: shards, label_key: shape, fewshot_epochs: 2}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    outs = {}
    for nproc in (1, 2):
        launcher = [sys.executable, "-m"] + ([] if nproc == 1 else
                                             ["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"])
        out = tmp_path / f"out{nproc}"
        proc = subprocess.run(launcher + ["eval", "--suite", str(tmp_path / "s.yaml"), "--model", str(root / "export"),
                                          "--out-dir", str(out), "--quiet", "--batch-size", "16"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[nproc] = out
    for task in ("r", "c", "p"):
        one, two = (json.loads((outs[n] / "export" / f"{task}.json").read_text()) for n in (1, 2))
        assert two["metrics"] == one["metrics"] and two["clipforge"]["world_size"] == 2
    assert (outs[1] / "summary.csv").read_text() == (outs[2] / "summary.csv").read_text()
