"""Our shards train in open_clip as-is: its own trainer data code (get_wds_dataset + sizes.json) and plain
webdataset read them."""
import argparse
import json

import pytest

from data_pipeline.convert import convert

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
