"""build_train_loader on real tar shards with real worker processes: coverage, resume, bad data."""
import json

import numpy as np
import open_clip
import pytest
import torch

from clipforge.data_pipeline.config import DataConfig, SourceConfig
from clipforge.data_pipeline.shards import ShardError, index_tar
from clipforge.data_pipeline.stream import LoaderStateError, build_train_loader
from tests.data_pipeline.conftest import jpeg_bytes, write_dataset

TOKENIZER = open_clip.get_tokenizer("ViT-B-32")


def make_loader(sources, *, rank=0, world=1, workers=0, batch=8, state=None, mode="epoch", window=6,
                seed=0, drop_last=True):
    cfg = DataConfig(sources=[SourceConfig(str(p), w) for p, w in sources], mode=mode, shuffle_window=window,
                     workers=workers)
    return build_train_loader(cfg, seed=seed, global_batch_size=batch, rank=rank, world_size=world,
                              image_size=24, tokenizer=TOKENIZER,
                              state=state, drop_last=drop_last)


def take(loader, steps):
    """Keys of the next `steps` batches, across epoch ends (a new `for` continues the sequence)."""
    out = []
    while len(out) < steps:
        for batch in loader:
            out.append(batch["keys"])
            if len(out) == steps:
                break
    return out


def take_global(loaders, steps):
    """Per step, the ranks' keys joined in rank order (= the global batch)."""
    per_rank = [take(loader, steps) for loader in loaders]
    return [sum((per_rank[r][s] for r in range(len(loaders))), []) for s in range(steps)]


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(small_dataset):
    out, keys = small_dataset
    loaders = [make_loader([(out, 1)], rank=r, world=2, workers=2) for r in range(2)]
    assert loaders[0].samples_per_epoch == 40 and loaders[0].steps_per_epoch == 5
    reference = take_global([make_loader([(out, 1)])], 10)  # one rank, no workers
    epochs = [[], []]
    for epoch in range(2):
        for rank, loader in enumerate(loaders):
            for batch in loader:
                assert batch["images"].dtype.is_floating_point is False and batch["images"].shape[1:] == (3, 24, 24)
                assert batch["tokens"].shape == (len(batch["keys"]), 77)
                epochs[epoch].append((rank, batch["keys"]))
                # Each image is a solid colour keyed by its sample index: pixels match the key.
                index = int(batch["keys"][0][1:])
                colour = np.random.default_rng(index).integers(0, 256, 3)
                assert np.abs(batch["images"][0].float().mean(dim=(1, 2)).numpy() - colour).max() < 4
    for epoch_batches in epochs:
        seen = [k for _, ks in epoch_batches for k in ks]
        assert len(seen) == 40 and sorted(seen) == keys
    assert epochs[0] != epochs[1]
    # Same global batches as one rank without workers, step by step.
    joined = [epochs[e][s][1] + epochs[e][5 + s][1] for e in range(2) for s in range(5)]
    assert joined == reference


@pytest.mark.parametrize("resume_world,resume_workers", [(2, 2), (3, 1), (1, 0)])
def test_resume_equals_uninterrupted_run(tmp_path, resume_world, resume_workers):
    a = write_dataset(tmp_path / "a", num_shards=3, per_shard=[9, 7, 8], prefix="a")
    write_dataset(tmp_path / "b", num_shards=2, per_shard=6, prefix="b")
    sources = [(tmp_path / "a", 3.0), (tmp_path / "b", 1.0)]
    reference = take_global([make_loader(sources, batch=6)], 16)
    first = [make_loader(sources, rank=r, world=2, workers=2, batch=6) for r in range(2)]
    head = take_global(first, 7)
    states = [loader.state_dict() for loader in first]
    assert states[0] == states[1] and states[0]["step"] == 7 and states[0]["position"] == 42
    assert sum(states[0]["consumed"]) == 42
    saved = json.loads(json.dumps(states[0]))  # what a checkpoint round-trip gives
    resumed = [make_loader(sources, rank=r, world=resume_world, workers=resume_workers, batch=6, state=saved)
               for r in range(resume_world)]
    tail = take_global(resumed, 9)
    assert head + tail == reference
    assert any(k.startswith("a") for k in sum(reference, [])) and any(k.startswith("b") for k in sum(reference, []))
    assert set(a) <= set(sum(reference, []))  # 16 steps x 6 = 96 draws cover source a (24 samples, weight 3/4)


def test_resampled_mode_resumes_exactly(small_dataset):
    out, _ = small_dataset
    loader = make_loader([(out, 1)], mode="resampled", batch=8)
    reference = take(loader, 12)
    first = make_loader([(out, 1)], mode="resampled", batch=8)
    head = take(first, 5)
    resumed = make_loader([(out, 1)], mode="resampled", batch=8, state=first.state_dict())
    assert head + take(resumed, 7) == reference
    seen = sum(reference, [])
    assert len(set(seen)) < len(seen)  # with replacement


def test_state_from_another_setup_is_refused(small_dataset):
    out, _ = small_dataset
    loader = make_loader([(out, 1)], batch=8)
    take(loader, 2)
    with pytest.raises(LoaderStateError, match="global_batch_size=8 in the checkpoint but 4"):
        make_loader([(out, 1)], batch=4, state=loader.state_dict())
    with pytest.raises(LoaderStateError, match="seed=0 in the checkpoint but 1"):
        make_loader([(out, 1)], batch=8, seed=1, state=loader.state_dict())


def test_bad_samples_and_truncated_shard_are_skipped_and_counted(tmp_path):
    import webdataset as wds

    keys = write_dataset(tmp_path, num_shards=3, per_shard=10, manifest=False)
    with wds.TarWriter(str(tmp_path / "shard-000003.tar")) as sink:
        sink.write({"__key__": "bad0", "jpg": b"\xff\xd8 not really a jpeg", "txt": "a caption"})
        sink.write({"__key__": "bad1", "jpg": jpeg_bytes(1)})  # no caption
        sink.write({"__key__": "bad2", "txt": "no image"})
        sink.write({"__key__": "good", "jpg": jpeg_bytes(2), "txt": "fine"})
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    sizes["shard-000003.tar"] = 4
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    # Cut shard 1 inside its 5th sample's image: 4 samples survive, 6 are missing.
    shard1 = tmp_path / "shard-000001.tar"
    cut = index_tar(str(shard1)).samples[4].members["jpg"][0] + 100
    with open(shard1, "r+b") as f:
        f.truncate(cut)
    loader = make_loader([(tmp_path, 1)], batch=17, workers=2)
    assert loader.samples_per_epoch == 34 and loader.steps_per_epoch == 2
    seen = [k for batch in loader for k in batch["keys"]]
    assert sorted(seen) == sorted(keys[:14] + keys[20:30] + ["good"])
    assert loader.counters == {"corrupt_image": 1, "missing_caption": 1, "missing_image": 1,
                               "missing_from_truncated_shard": 6}
    assert sum(loader.counters.values()) + len(seen) == 34
    resumed = make_loader([(tmp_path, 1)], batch=17, state=loader.state_dict())
    assert resumed.counters == loader.counters  # cumulative across resumes


def test_missing_shard_is_a_clear_error_before_start(small_dataset):
    out, _ = small_dataset
    (out / "shard-000001.tar").unlink()
    with pytest.raises(ShardError, match="shard-000001.tar"):
        make_loader([(out, 1)], workers=2)


def test_batch_larger_than_an_epoch_is_refused(small_dataset):
    out, _ = small_dataset
    with pytest.raises(ValueError, match="global batch size 64 is larger than the 40 samples"):
        make_loader([(out, 1)], batch=64)


def test_fewer_shards_than_ranks_times_workers_is_split_by_samples(tmp_path):
    keys = write_dataset(tmp_path, num_shards=1, per_shard=12)  # 1 shard, 2 ranks x 2 workers: no hang
    loaders = [make_loader([(tmp_path, 1)], rank=r, world=2, workers=2, batch=4) for r in range(2)]
    seen = [k for loader in loaders for batch in loader for k in batch["keys"]]
    assert sorted(seen) == keys


def test_one_pass_is_one_epoch(small_dataset):
    # samples/s and data wait are the trainer's to time (pretrain/train.py, pretrain/metrics.py), not the loader's
    out, _ = small_dataset
    loader = make_loader([(out, 1)], workers=1)
    assert sum(len(b["keys"]) for b in loader) == 40
    assert len(loader) == loader.steps_per_epoch == 5 and loader.epoch == 1


@pytest.mark.flickr8k
def test_converter_output_trains(flickr8k_dir, tmp_path):
    """Shards written by data_pipeline.convert (real photos, 5 captions each) feed the loader."""
    from clipforge.data_pipeline.convert import convert
    from clipforge.data_pipeline.shards import open_shards

    rows = (flickr8k_dir / "originals" / "captions.csv").read_text().splitlines()
    subset = tmp_path / "subset.csv"
    subset.write_text(rows[0] + "\n" + "\n".join(f"{flickr8k_dir}/originals/{r}" for r in rows[1:41]) + "\n")
    convert([str(subset)], str(tmp_path / "ds"), image_size=96, samples_per_shard=3, workers=1, progress=False)
    dataset = open_shards(str(tmp_path / "ds"))
    assert dataset.num_samples == 8 and len(dataset.shards) == 3
    captions = {s["key"]: s["captions"] for s in dataset.iter_samples()}
    assert all(len(c) == 5 for c in captions.values())
    loader = make_loader([(tmp_path / "ds", 1)], batch=4, workers=1)
    for epoch in range(2):
        batches = list(loader)
        assert sorted(k for b in batches for k in b["keys"]) == sorted(captions)
        for batch in batches:
            for key, tokens in zip(batch["keys"], batch["tokens"]):
                options = TOKENIZER(captions[key])
                assert any(bool((tokens == option).all()) for option in options)


def test_pixels_and_caption_choice_do_not_depend_on_workers_or_ranks(small_dataset):
    out, _ = small_dataset
    single = list(make_loader([(out, 1)], workers=0))
    ranks = [list(make_loader([(out, 1)], rank=r, world=2, workers=2)) for r in range(2)]
    for step, batch in enumerate(single):
        halves = [ranks[0][step], ranks[1][step]]
        assert batch["keys"] == halves[0]["keys"] + halves[1]["keys"]
        assert (batch["images"] == torch.cat([h["images"] for h in halves])).all()
        assert (batch["tokens"] == torch.cat([h["tokens"] for h in halves])).all()


def test_caption_choice_is_per_visit(small_dataset):
    out, _ = small_dataset
    loader = make_loader([(out, 1)])
    chosen = [{}, {}]
    for epoch in range(2):
        for batch in loader:
            for key, tokens in zip(batch["keys"], batch["tokens"]):
                chosen[epoch][key] = int((tokens == TOKENIZER([f"caption 1 of {key}"])[0]).all())
    assert 5 < sum(chosen[0].values()) < 35  # both lines get picked (2 captions per sample)
    assert chosen[0] != chosen[1]  # and the choice is drawn again at each visit
