"""The peer itself: CLIP_benchmark 1.6.2's own evaluate() functions, run on the same shards and model,
give the same numbers as `clipforge eval` (retrieval and classification, fp32 / no AMP).

CLIP_benchmark needs scikit-learn, which clipforge does not; it lives in its own target dir:
    .venv/bin/pip install --no-deps --target .venv-peers/clip_benchmark clip-benchmark==1.6.2 \
        scikit-learn==1.6.1 scipy==1.15.3 joblib==1.4.2 threadpoolctl==3.5.0
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipforge.eval.cli import main

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / ".venv-peers" / "clip_benchmark"

PEER_SCRIPT = r"""
import io, json, sys
import open_clip, torch
from PIL import Image
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
from clipforge.data_pipeline.shards import iter_samples

export, shards, task = sys.argv[1:4]
model, _, transform = open_clip.create_model_and_transforms("local-dir:" + export)
tokenizer = open_clip.get_tokenizer("local-dir:" + export)
samples = list(iter_samples(shards))
images = [transform(Image.open(io.BytesIO(s["image_bytes"])).convert("RGB")) for s in samples]
if task == "retrieval":
    data = [(im, s["captions"]) for im, s in zip(images, samples)]
    collate = lambda b: (torch.stack([x for x, _ in b]), [y for _, y in b])
    loader = torch.utils.data.DataLoader(data, batch_size=16, collate_fn=collate)
    out = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
else:
    # numpy >= 2.4 refuses float() of a 1-element array, which CLIP_benchmark 1.6.2's accuracy() does;
    # the same formula, reading the count with .item():
    def accuracy(output, target, topk=(1,)):
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]
    zeroshot_classification.accuracy = accuracy
    classes = sorted({s["meta"]["color"] for s in samples})
    data = [(im, classes.index(s["meta"]["color"])) for im, s in zip(images, samples)]
    class Data(list):  # CLIP_benchmark reads dataloader.dataset.classes
        pass
    ds = Data(data)
    ds.classes = classes
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    out = zeroshot_classification.evaluate(model, loader, tokenizer, classes, ["a photo of a {c}."], "cpu", amp=False)
print(json.dumps(out))
"""


def peer_metrics(export, shards, task):
    if not (PEER / "clip_benchmark").is_dir():
        pytest.skip(f"CLIP_benchmark not installed at {PEER} (see this file's docstring for the command)")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{PEER}", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PEER_SCRIPT, str(export), str(shards), task], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours(args, out):
    assert main([str(a) for a in args] + ["--out", str(out), "--quiet", "--batch-size", "16"]) == 0
    return json.loads(out.read_text())["metrics"]


def test_retrieval_equals_clip_benchmark(eval_shards, tiny_model, tmp_path):
    root, _ = tiny_model
    peer = peer_metrics(root / "export", eval_shards / "shards", "retrieval")
    mine = ours(["--model", root / "export", "--data", eval_shards / "shards", "--task", "retrieval"], tmp_path / "r.json")
    assert set(peer) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert {k: mine[k] for k in peer} == peer


def test_classification_equals_clip_benchmark(eval_shards, tiny_model, tmp_path):
    root, _ = tiny_model
    peer = peer_metrics(root / "export", eval_shards / "shards", "classification")
    mine = ours(["--model", root / "export", "--data", eval_shards / "shards", "--task", "classification",
                 "--label-key", "color", "--templates", "simple"], tmp_path / "c.json")
    assert set(peer) == {"acc1", "acc5", "mean_per_class_recall"}
    assert mine == peer
