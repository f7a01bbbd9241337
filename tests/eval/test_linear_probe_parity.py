"""The linear probe equals CLIP_benchmark 1.6.2's own linear_probe.evaluate on the same features.

The peer is run on its cached-features path (features_{train,val,test}.pt in feature_root/model_id, which it
reads instead of embedding) in a subprocess with PYTHONPATH=.venv-peers/clip_benchmark. It asserts
device == "cuda" and calls .cuda(); on a CPU the script hands it a device string that compares equal to
"cuda" but is "cpu" to torch, and makes .cuda() a no-op. Tolerance: none. The same seed gives the same
init and the same batches, so the chosen weight decay and every metric are identical (observed on this
machine to the last bit; a difference would mean the procedure differs, not rounding).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from clipforge.eval.probe import ProbeConfig, linear_probe

from .test_clip_benchmark_parity import PEER, REPO

PEER_SCRIPT = r"""
import json, os, sys
import torch
from clip_benchmark.metrics import linear_probe

class Cuda(str):
    def __eq__(self, other):
        return other == "cuda" or str.__eq__(self, other)
    __hash__ = str.__hash__

torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
def accuracy(output, target, topk=(1,)):  # numpy >= 2.4 refuses float() of a 1-element array (1.6.2 does it)
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]
linear_probe.accuracy = accuracy
root, seed, lr, epochs, bs, fewshot = sys.argv[1:7]
has_val = os.path.exists(os.path.join(root, "m", "features_val.pt"))
torch.manual_seed(int(seed))  # CLIP_benchmark's cli seeds the global RNG before evaluate()
out = linear_probe.evaluate(torch.nn.Identity(), None, None, int(fewshot), int(bs), 0, float(lr), int(epochs), "m",
                            int(seed), root, Cuda("cpu"), val_dataloader=object() if has_val else None, amp=False)
print(json.dumps(out))
"""


def clustered(n, centers, g, noise=1.5):
    y = torch.randint(0, len(centers), (n,), generator=g)
    x = torch.nn.functional.normalize(centers[y] + noise * torch.randn(n, centers.shape[1], generator=g), dim=-1)
    return x, y


@pytest.fixture(scope="module")
def features():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(7, 16, generator=g)
    return clustered(300, centers, g), clustered(100, centers, g), clustered(200, centers, g)


def peer(tmp_path, splits, cfg):
    if not (PEER / "clip_benchmark").is_dir():
        pytest.skip(f"CLIP_benchmark not installed at {PEER} (see test_clip_benchmark_parity.py)")
    (tmp_path / "m").mkdir()
    for name, (x, y) in splits.items():
        torch.save(x, tmp_path / "m" / f"features_{name}.pt")
        torch.save(y, tmp_path / "m" / f"targets_{name}.pt")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{PEER}", "OMP_NUM_THREADS": "1"}
    args = [str(v) for v in (tmp_path, cfg.seed, cfg.lr, cfg.epochs, cfg.batch_size, cfg.fewshot_k)]
    proc = subprocess.run([sys.executable, "-c", PEER_SCRIPT, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fewshot_k, with_val, seed", [(-1, True, 0), (5, True, 3), (-1, False, 0)])
def test_linear_probe_equals_clip_benchmark(features, tmp_path, fewshot_k, with_val, seed):
    (train, val, test) = features
    cfg = ProbeConfig(lr=0.1, epochs=3, batch_size=32, seed=seed, fewshot_k=fewshot_k)
    splits = {"train": train, "test": test, **({"val": val} if with_val else {})}
    theirs = peer(tmp_path, splits, cfg)
    mine, tried = linear_probe(*train, *test, 7, val=val if with_val else None, cfg=cfg)
    assert {k: mine[k] for k in ("acc1", "acc5", "mean_per_class_recall", "weight_decay")} == {
        "acc1": theirs["lp_acc1"], "acc5": theirs["lp_acc5"],
        "mean_per_class_recall": theirs["lp_mean_per_class_recall"], "weight_decay": theirs["weight_decay"]}
    assert 1 / 7 < mine["acc1"] < 1  # a real probe: above chance, not trivially perfect
    if with_val:  # 7 first values + 2 new per refinement round at most; each trained once
        assert 7 < len(tried) <= 15 and mine["weight_decay"] in tried
    else:
        assert tried == {} and mine["weight_decay"] == 0.0
