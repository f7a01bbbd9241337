"""data.captions_per_sample: K distinct captions of each image per visit, image-major, seeded by position
(the same on resume and for any worker count), and the sample ids the loss uses to find positives."""
import torch

from clipforge.data_pipeline.config import DataConfig, SourceConfig
from clipforge.data_pipeline.stream import build_train_loader
from tests.data_pipeline.conftest import write_dataset


def caption_number(captions):
    """'caption j of KEY' -> [[j]]: the test reads which lines were drawn from the tokens."""
    return torch.tensor([[int(c.split()[1])] for c in captions])


def loader(path, k, mode="epoch", workers=0, batch=8):
    cfg = DataConfig(sources=[SourceConfig(path=str(path))], mode=mode, workers=workers, captions_per_sample=k,
                     shuffle_window=16)
    return build_train_loader(cfg, seed=3, global_batch_size=batch, rank=0, world_size=1, image_size=16,
                              tokenizer=caption_number)


def test_k_distinct_captions_per_image_image_major(tmp_path):
    write_dataset(tmp_path / "ds", num_shards=2, per_shard=8, captions_per_sample=5)
    batches = list(loader(tmp_path / "ds", 3))
    assert len(batches) == 2
    for batch in batches:
        b = len(batch["keys"])
        drawn = batch["tokens"].view(b, 3)
        assert torch.equal(drawn, batch["caption_index"])  # rows i*3..i*3+2 are image i's
        assert all(len(set(row.tolist())) == 3 for row in drawn)  # distinct lines of its KEY.txt
        assert batch["sample_ids"].shape == (b,) and batch["sample_ids"].unique().numel() == b
    # Seeded by position: another worker count draws the same captions.
    again = list(loader(tmp_path / "ds", 3, workers=2))
    assert all(torch.equal(a["caption_index"], b["caption_index"]) for a, b in zip(batches, again))


def test_fewer_captions_than_k_cycle(tmp_path):
    write_dataset(tmp_path / "ds", num_shards=1, per_shard=8, captions_per_sample=2)
    batch = next(iter(loader(tmp_path / "ds", 5)))
    for row in batch["caption_index"].tolist():
        assert sorted(set(row)) == [0, 1] and row[:2] == row[2:4]


def test_same_image_twice_has_the_same_sample_id(tmp_path):
    write_dataset(tmp_path / "ds", num_shards=1, per_shard=4, captions_per_sample=2)
    # Resampled with 4 images and batches of 32: images repeat within a batch.
    batch = next(iter(loader(tmp_path / "ds", 1, mode="resampled", batch=32)))
    by_key = {}
    for key, sample_id in zip(batch["keys"], batch["sample_ids"].tolist()):
        assert by_key.setdefault(key, sample_id) == sample_id
    assert len(by_key) == 4 and len(set(by_key.values())) == 4
