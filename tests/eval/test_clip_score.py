"""`clipforge eval --task clip_score`: every sample's CLIP score (cosine of its image's and first caption's
embeddings, DataComp's definition) and image embedding, in batches, equal to embedding each sample alone; the
parquet is what `clipforge curate --scores --top-fraction` and `--embeddings` read."""
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.data_pipeline.curate.cli import main as curate_main
from clipforge.data_pipeline.shards import decode_sample, index_tar, open_shards
from clipforge.eval.cli import main as eval_main
from clipforge.modeling.load_model import load_model

REPO = Path(__file__).resolve().parents[2]


@torch.no_grad()
def one_at_a_time(model_dir, shards):
    """(keys, scores, image embeddings): each sample through the towers alone, with its first caption."""
    loaded = load_model(str(model_dir))
    keys, scores, images = [], [], []
    for shard in open_shards(str(shards)).shards:
        with open(shard.path, "rb") as f:
            for entry in index_tar(shard.path).samples:
                sample = decode_sample(f, entry)
                with Image.open(io.BytesIO(sample["image_bytes"])) as im:
                    pixels = loaded.transform(im.convert("RGB"))[None]
                image = F.normalize(loaded.model.encode_image(pixels), dim=-1)[0]
                text = F.normalize(loaded.model.encode_text(loaded.tokenizer(sample["captions"][:1])), dim=-1)[0]
                keys.append(sample["key"])
                scores.append(float(image @ text))
                images.append(image.numpy())
    return keys, np.array(scores), np.stack(images)


def score(model_dir, shards, out, batch_size):
    assert eval_main(["--model", str(model_dir), "--data", str(shards), "--task", "clip_score", "--out", str(out),
                      "--batch-size", str(batch_size), "--quiet"]) == 0
    return pq.read_table(out)


def test_batched_scores_equal_one_at_a_time_and_curate_keeps_the_top_half(eval_shards, tiny_model, tmp_path):
    root, _ = tiny_model
    shards = eval_shards / "shards"  # 40 samples, 16 per shard, 2 captions each
    # batches of 7 straddle the shard boundaries and end short; the second caption must not count
    table = score(root / "export", shards, tmp_path / "scores.parquet", batch_size=7)
    keys, reference, images = one_at_a_time(root / "export", shards)
    assert table.column("key").to_pylist() == keys and len(keys) == 40  # one row per sample, dataset order
    np.testing.assert_allclose(table.column("clip_score").to_numpy(), reference, atol=1e-5)
    embedding = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(embedding, images, atol=1e-5)
    assert b"first caption" in table.schema.metadata[b"clipforge"]

    out = tmp_path / "top"
    assert curate_main([str(shards), "--out", str(out), "--scores", str(tmp_path / "scores.parquet"),
                        "--top-fraction", "0.5", "--no-progress"]) == 0
    fates = pq.read_table(out / "curation.parquet").to_pydict()
    kept = {key for key, status in zip(fates["key"], fates["status"]) if status == "success"}
    best = {keys[i] for i in np.argsort(-reference, kind="stable")[:20]}
    assert kept == best and fates["filter"].count("top_fraction") == 20 and len(fates["key"]) == 40


@pytest.mark.flickr8k
def test_flickr8k_scores_with_five_captions_each(flickr8k_dir, tiny_model, tmp_path):
    """Real photos with 5 human captions each (36 of the originals, converted at the model's 64 px): only the
    first caption scores, and curate's --min-score keeps exactly the samples at or above the threshold."""
    from clipforge.data_pipeline.convert.api import convert
    root, _ = tiny_model
    lines = (flickr8k_dir / "originals" / "captions.csv").read_text().splitlines()
    table_csv = tmp_path / "captions.csv"
    table_csv.write_text("\n".join([lines[0]] + [
        f"{flickr8k_dir / 'originals'}/{line}" for line in lines[1:1 + 36 * 5]]) + "\n")
    convert([str(table_csv)], str(tmp_path / "shards"), image_size=64, samples_per_shard=16, progress=False)
    table = score(root / "export", tmp_path / "shards", tmp_path / "scores.parquet", batch_size=16)
    keys, reference, _ = one_at_a_time(root / "export", tmp_path / "shards")
    assert table.column("key").to_pylist() == keys and len(keys) == 36
    np.testing.assert_allclose(table.column("clip_score").to_numpy(), reference, atol=1e-5)
    threshold = float(np.median(reference))
    assert curate_main([str(tmp_path / "shards"), "--out", str(tmp_path / "kept"), "--scores",
                        str(tmp_path / "scores.parquet"), "--min-score", str(threshold), "--no-progress"]) == 0
    fates = pq.read_table(tmp_path / "kept" / "curation.parquet").to_pydict()
    kept = {key for key, status in zip(fates["key"], fates["status"]) if status == "success"}
    assert kept == {key for key, s in zip(keys, table.column("clip_score").to_pylist()) if s >= threshold}


@pytest.mark.multiprocess
def test_two_ranks_write_the_one_rank_file(eval_shards, tiny_model, tmp_path):
    """Each rank embeds its share (batches of 16 over 40 samples: rank 0 one batch, rank 1 two); rank 0 writes
    every sample's row, in dataset order, equal to a single process's."""
    root, _ = tiny_model
    one = score(root / "export", eval_shards / "shards", tmp_path / "one.parquet", batch_size=16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "clipforge.eval", "--model", str(root / "export"), "--data",
                           str(eval_shards / "shards"), "--task", "clip_score", "--batch-size", "16", "--out",
                           str(tmp_path / "two.parquet"), "--quiet"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 writes
    two = pq.read_table(tmp_path / "two.parquet")
    assert two.column("key").to_pylist() == one.column("key").to_pylist()
    np.testing.assert_allclose(two.column("clip_score").to_numpy(), one.column("clip_score").to_numpy(), atol=1e-6)
