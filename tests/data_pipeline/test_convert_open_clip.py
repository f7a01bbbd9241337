"""Our shards train in open_clip as-is: its own trainer data code (get_wds_dataset + sizes.json) and plain
webdataset read them."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipforge.data_pipeline.convert import convert

from .convert_inputs import caption_table

open_clip = pytest.importorskip("open_clip")
wds = pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("oc")
    table = caption_table(root / "raw", count=10, captions_per_image=2, size=(80, 60))
    convert([table], str(root / "out"), image_size=64, samples_per_shard=4, progress=False)
    return root / "out"


def test_open_clip_trainer_data_reads_our_shards_with_sizes_json(shards):
    data = pytest.importorskip("open_clip_train.data", reason="open_clip_train.data needs pandas")
    pattern = str(shards / "shard-{000000..000002}.tar")
    # open_clip sizes a training run from our sizes.json: 4 + 4 + 2 samples in 3 shards
    assert data.get_dataset_size(pattern) == (10, 3)
    # Its webdataset pipeline (select, decode "pilrgb", rename jpg;png;jpeg;webp/txt, preprocess, tokenize, batch).
    # The is_train=True branch is not used: open_clip_train 3.3 + webdataset >= 0.2.96 fail there on ANY shards
    # (KeyError 'fname' from the end-of-shard marker: webdataset#384, open_clip#935), not on ours.
    args = argparse.Namespace(val_data=pattern, train_data=None, val_num_samples=10, batch_size=4, workers=0)
    preprocess = open_clip.image_transform(64, is_train=False)
    info = data.get_wds_dataset(args, preprocess, is_train=False, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    batches = list(info.dataloader)
    assert info.dataloader.num_batches == 3
    assert [tuple(images.shape) for images, _ in batches] == [(4, 3, 64, 64), (4, 3, 64, 64), (2, 3, 64, 64)]
    assert all(tokens.shape[1] == 77 for _, tokens in batches)


def test_plain_webdataset_reads_every_sample(shards):
    urls = [str(shards / f"shard-{i:06d}.tar") for i in range(3)]
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil")
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(10)]
    assert all(s["jpg"].size[1] == 64 and len(s["txt"].split("\n")) == 2 for s in samples)
    assert all(json.loads(json.dumps(s["json"]))["captions"] == s["txt"].split("\n") for s in samples)


PEER_WDS = Path(__file__).resolve().parents[2] / ".venv-peers" / "wds0286"

TRAIN_READER = """
import argparse, collections, json, sys
import open_clip
from open_clip_train.data import get_wds_dataset
args = argparse.Namespace(train_data=sys.argv[1], train_num_samples=None, train_data_upsampling_factors=None,
                          dataset_resampled=False, batch_size=2, workers=1, world_size=1, seed=0)
data = get_wds_dataset(args, open_clip.image_transform(64, is_train=True), is_train=True, epoch=0,
                       tokenizer=open_clip.get_tokenizer("ViT-B-32"))
shapes = collections.Counter(tuple(images.shape) for images, _ in data.dataloader)
print(json.dumps({"num_samples": data.dataloader.num_samples, "batches": sorted(shapes.items())}))
"""


def test_open_clip_training_branch_reads_our_shards(shards):
    """open_clip's is_train=True pipeline as open_clip users run it today (webdataset 0.2.86, the last release
    it works with), in its own process: it sizes the run from our sizes.json and trains on every sample."""
    if not (PEER_WDS / "webdataset").is_dir():
        pytest.skip(f"webdataset 0.2.86 for open_clip's trainer is not installed in {PEER_WDS} (make test installs it)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PEER_WDS), os.environ.get("PYTHONPATH", "")]))
    pattern = str(shards / "shard-{000000..000002}.tar")
    result = subprocess.run([sys.executable, "-c", TRAIN_READER, pattern], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # 10 samples from sizes.json; open_clip drops the last partial batch in training: 5 batches of 2.
    assert report["num_samples"] == 10
    assert report["batches"] == [[[2, 3, 64, 64], 5]]
