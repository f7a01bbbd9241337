"""data.hard_negatives: refused with one line at load time (so before `launch` or `pretrain` spawn anything) where
the loss or the text tower cannot take it, and by the preflight for a dataset converted without KEY.neg.txt."""
import json

import pytest

from clipforge.modeling.config import ConfigError, load_config
from clipforge.pretrain.preflight import preflight


def load(*overrides):
    return load_config(None, ["data.sources=[{path: x}]", "train.steps=1", *overrides])


@pytest.mark.parametrize("overrides, expected", [
    (["data.hard_negatives=-1"], "data.hard_negatives=-1: must be >= 0"),
    (["data.hard_negatives=2", "loss.impl=tiled"], "data.hard_negatives=2 needs loss.kind=infonce loss.impl=naive"),
    (["data.hard_negatives=2", "loss.kind=siglip"], "data.hard_negatives=2 needs loss.kind=infonce loss.impl=naive"),
    (["data.hard_negatives=1", "model.hf_text_dir=.", "model.lock_text=true"], "set model.text_cache=false"),
    (["data.caption_weights={neg.txt: 1.0}"], "'neg.txt' holds the hard negatives"),
])
def test_impossible_combinations_are_one_line(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load(*overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_what_the_loss_takes_loads():
    cfg = load("data.hard_negatives=3", "loss.local_loss=true")
    assert cfg.data.hard_negatives == 3 and load().data.hard_negatives == 0
    assert load("data.hard_negatives=1", "data.captions_per_sample=2").data.captions_per_sample == 2
    assert load("data.hard_negatives=1", "model.hf_text_dir=.", "model.lock_text=true", "model.text_cache=false")


@pytest.mark.parametrize("listed, refused", [(None, True), ("neg.txt", False)])
def test_preflight_refuses_a_dataset_without_hard_negatives(tmp_path, listed, refused):
    manifest = {"format": "clipforge-shards", "shards": [{"name": "shard-000000.tar", "samples": 4}]}
    if listed:
        manifest["hard_negatives"] = listed
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    cfg = load(f"data.sources=[{{path: '{tmp_path}'}}]", "data.hard_negatives=2", "model.name=RN50")
    if not refused:
        preflight(cfg)
        return
    with pytest.raises(ConfigError, match=r"data.hard_negatives=2: data.sources\[0\].path=.* has no hard negatives"):
        preflight(cfg)
