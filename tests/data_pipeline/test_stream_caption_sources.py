"""data.caption_weights on shards converted with two caption columns: the source of each visit is drawn by weight
from (seed, position), so it repeats for equal seeds and on resume; a sample without the source falls back to
KEY.txt, counted; bad weights are refused before start."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clipforge.data_pipeline.config import DataConfig, DataConfigError, SourceConfig
from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline.stream import build_train_loader
from clipforge.data_pipeline.stream.caption_sources import CaptionWeights
from clipforge.modeling.config import load_config

from .convert_inputs import jpeg, write, write_csv

SOURCES = {"original": 0, "synthetic": 1}
NO_RECAPTION = 5  # image 5's synthetic cell is empty: it has no KEY.synthetic.txt
DOCS = Path(__file__).resolve().parents[2] / "docs" / "loader.md"


def which(captions):
    """'synthetic 7' -> [1, 7]: the test reads the source and the image from the tokens."""
    return torch.tensor([[SOURCES[c.split()[0]], int(c.split()[1])] for c in captions])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("recaptioned")
    rows = []
    for i in range(12):
        write(root / "images" / f"img{i}.jpg", jpeg(40, 32, seed=i))
        rows.append((f"images/img{i}.jpg", f"original {i}", "" if i == NO_RECAPTION else f"synthetic {i}"))
    table = write_csv(root / "table.csv", rows, header=("image", "original", "synthetic"))
    convert([table], str(root / "shards"), image_size=24, samples_per_shard=4, caption_col=["original", "synthetic"],
            progress=False)
    return str(root / "shards")


def loader(path, weights, seed=0, batch=4, mode="epoch", state=None, workers=0):
    cfg = DataConfig(sources=[SourceConfig(path=path)], mode=mode, shuffle_window=6, workers=workers,
                     caption_weights=weights)
    cfg.validate()
    return build_train_loader(cfg, seed=seed, global_batch_size=batch, rank=0, world_size=1, image_size=16,
                              tokenizer=which, state=state)


def take(train_loader, steps):
    out = []
    while len(out) < steps:
        for batch in train_loader:
            out.append(batch)
            if len(out) == steps:
                break
    return out


def test_the_draw_matches_the_weights_over_many_visits():
    weights = CaptionWeights.of({"txt": 0.5, "synthetic.txt": 0.3, "short.txt": 0.2})
    chosen = weights.choose(seed=7, positions=np.arange(200_000))
    shares = {name: chosen.count(name) / len(chosen) for name in weights.names}
    # binomial sd at 200,000 draws is <= 0.0012: +-0.005 is > 4 sd
    assert shares == pytest.approx({"txt": 0.5, "synthetic.txt": 0.3, "short.txt": 0.2}, abs=0.005)
    assert weights.choose(7, np.arange(1000)) == chosen[:1000]  # pure: the same positions, the same sources
    assert weights.choose(8, np.arange(1000)) != chosen[:1000]
    # the config's key order does not matter
    assert CaptionWeights.of({"short.txt": 2, "synthetic.txt": 3, "txt": 5}).choose(7, np.arange(1000)) == chosen[:1000]


def test_the_loader_reads_sources_at_the_weighted_rate(shards):
    train_loader = loader(shards, {"txt": 0.25, "synthetic.txt": 0.75}, batch=200, mode="resampled")
    read = torch.cat([b["tokens"] for b in take(train_loader, 10)])
    # asked for the recaption: read it, or (image 5, which has none) fell back to KEY.txt
    asked = int((read[:, 0] == 1).sum()) + train_loader.caption_fallbacks["synthetic.txt"]
    # 2,000 visits: the share's sd is 0.0097, so +-0.04 is 4 sd
    assert len(read) == 2000 and asked / len(read) == pytest.approx(0.75, abs=0.04)
    assert not ((read[:, 0] == 1) & (read[:, 1] == NO_RECAPTION)).any()


def test_equal_seeds_equal_sources_and_other_seeds_others(shards):
    weights = {"txt": 0.5, "synthetic.txt": 0.5}
    first = [b["tokens"] for b in take(loader(shards, weights, seed=1), 6)]
    again = [b["tokens"] for b in take(loader(shards, weights, seed=1, workers=2), 6)]
    other = [b["tokens"] for b in take(loader(shards, weights, seed=2), 6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_resume_reads_the_same_sources_as_the_uninterrupted_run(shards):
    weights = {"txt": 0.5, "synthetic.txt": 0.5}
    whole = loader(shards, weights, seed=3)
    reference = take(whole, 9)  # 3 steps per epoch: crosses two epoch ends
    first = loader(shards, weights, seed=3)
    take(first, 4)
    resumed = loader(shards, weights, seed=3, state=first.state_dict())
    rest = take(resumed, 5)
    assert all(torch.equal(a["tokens"], b["tokens"]) and a["keys"] == b["keys"] for a, b in zip(reference[4:], rest))
    assert resumed.caption_fallbacks == whole.caption_fallbacks
    with pytest.raises(ValueError, match="caption_weights"):  # other weights: not this run's sequence
        loader(shards, {"txt": 0.9, "synthetic.txt": 0.1}, seed=3, state=first.state_dict())


def test_a_sample_without_the_source_falls_back_to_the_primary_counted(shards):
    train_loader = loader(shards, {"synthetic.txt": 1.0})
    read = torch.cat([b["tokens"] for b in take(train_loader, 6)])  # 2 epochs of 12 samples
    for source, image in read.tolist():
        assert source == (0 if image == NO_RECAPTION else 1)
    assert train_loader.caption_fallbacks == {"synthetic.txt": 2} and train_loader.counters == {}
    assert train_loader.state_dict()["caption_fallbacks"] == {"synthetic.txt": 2}


def test_primary_weight_alone_is_the_loader_without_weights(shards):
    plain, weighted = take(loader(shards, None), 3), take(loader(shards, {"txt": 1.0}), 3)
    for a, b in zip(plain, weighted):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["tokens"], b["tokens"])
    assert "caption_fallbacks" not in loader(shards, None).state_dict()


@pytest.mark.parametrize("weights, words", [
    ({}, "data.caption_weights is empty"),
    ({"txt": 0.5, "synthetic.txt": -1}, "data.caption_weights['synthetic.txt']=-1: must be a number > 0"),
    ({"txt": 0.5, "synthetic": 0.5}, "'synthetic' is not a caption source name"),
    ({"txt": 0.5, "KEY.Syn.txt": 0.5}, "'KEY.Syn.txt' is not a caption source name"),
])
def test_bad_weights_are_refused_naming_the_key(weights, words):
    with pytest.raises(DataConfigError, match=re.escape(words)):
        DataConfig(sources=[SourceConfig(path="x")], caption_weights=weights).validate()


def test_a_source_no_manifest_lists_is_refused_before_start(shards):
    with pytest.raises(DataConfigError, match=r"names recaption\.txt, which no data.sources manifest lists "
                                              r"\(caption_sources: .*: txt, synthetic\.txt\)"):
        loader(shards, {"txt": 0.5, "recaption.txt": 0.5})
    cfg = DataConfig(sources=[SourceConfig(path=shards)], caption_weights={"synthetic.txt": 1.0})
    with pytest.raises(DataConfigError, match="stored text embeddings"):
        build_train_loader(cfg, seed=0, global_batch_size=4, rank=0, world_size=1, image_size=16, tokenizer=which,
                           text_store=("teacher", {}))


def test_the_docs_config_example_loads_and_trains_on_both_sources(shards, tmp_path):
    block = re.search(r"```yaml\n(data:\n(?:.*\n)*?)```", DOCS.read_text()).group(1)
    assert "caption_weights" in block
    (tmp_path / "run.yaml").write_text(block.replace("shards/", shards))
    cfg = load_config(str(tmp_path / "run.yaml"), ["train.steps=2"])
    assert cfg.data.caption_weights == {"txt": 0.5, "synthetic.txt": 0.5}
    read = torch.cat([b["tokens"] for b in take(loader(shards, cfg.data.caption_weights), 3)])
    assert set(read[:, 0].tolist()) == {0, 1}
    # the same from the command line: a flow mapping keeps the dotted names whole
    cfg = load_config(str(tmp_path / "run.yaml"), ["train.steps=2", "data.caption_weights={txt: 0.2, synthetic.txt: 0.8}"])
    assert cfg.data.caption_weights == {"txt": 0.2, "synthetic.txt": 0.8}
