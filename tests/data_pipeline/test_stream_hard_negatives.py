"""data.hard_negatives K: batch["neg_tokens"] [b, K, L] holds each image's first K lines of KEY.neg.txt in file
order (cycled when fewer, counted), a sample without any is skipped and counted, a resumed loader yields exactly
what the uninterrupted one does, and a dataset converted without hard negatives is refused before start."""
import pytest
import torch

from clipforge.data_pipeline.config import DataConfig, DataConfigError, SourceConfig
from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline.stream import build_train_loader

from .test_convert_hard_negatives import negatives_jsonl

# image i: 3 negatives (i % 3 == 0), 1 (i % 3 == 1) or none (i % 3 == 2)
COUNTS = [3 - 2 * (i % 3) if i % 3 < 2 else 0 for i in range(12)]


def encode(texts):
    """'caption I' -> [I, -1]; 'neg J of I' -> [I, J]: the test reads back whose caption each row holds."""
    rows = [[int(t.split()[1]), -1] if t.startswith("caption") else [int(t.split()[3]), int(t.split()[1])]
            for t in texts]
    return torch.tensor(rows)


@pytest.fixture
def dataset(tmp_path):
    lists = [[f"neg {j} of {i}" for j in range(n)] for i, n in enumerate(COUNTS)]
    table = negatives_jsonl(tmp_path, lists)
    convert([table], str(tmp_path / "out"), image_size=16, progress=False, neg_caption_col="negs",
            samples_per_shard=6)
    return str(tmp_path / "out")


def loader(path, k=2, state=None, workers=0):
    cfg = DataConfig(sources=[SourceConfig(path=path)], workers=workers, hard_negatives=k, shuffle_window=4)
    return build_train_loader(cfg, seed=1, global_batch_size=3, rank=0, world_size=1, image_size=16,
                              tokenizer=encode, state=state, drop_last=False)


def test_each_image_gets_its_first_k_negatives_in_order(dataset):
    it = loader(dataset, k=2)
    batches = list(it)
    seen = []
    for batch in batches:
        b = len(batch["keys"])
        assert batch["neg_tokens"].shape == (b, 2, 2) and batch["neg_tokens"].dtype == torch.int64
        for row, (image, _), negatives in zip(range(b), batch["tokens"].tolist(), batch["neg_tokens"].tolist()):
            want = [[image, j % COUNTS[image]] for j in range(2)]  # the first 2, cycled when fewer
            assert negatives == want, (batch["keys"][row], negatives)
            seen.append(image)
    assert sorted(seen) == [i for i, n in enumerate(COUNTS) if n]
    assert it.counters == {"missing_hard_negatives": COUNTS.count(0)}
    assert it.negatives_padded == COUNTS.count(1) == it.state_dict()["negatives_padded"]


def test_a_resumed_loader_yields_the_same_negatives(dataset):
    full = [b["neg_tokens"] for b in loader(dataset)]
    first = loader(dataset)
    head = iter(first)
    next(head)
    state = first.state_dict()
    resumed = loader(dataset, state=state)
    rest = [b["neg_tokens"] for b in resumed]
    assert len(rest) == len(full) - 1 and all(torch.equal(a, b) for a, b in zip(rest, full[1:]))
    assert resumed.negatives_padded == COUNTS.count(1)  # counted on from the state's count
    with pytest.raises(ValueError, match="hard_negatives=2 in the checkpoint but 1"):
        loader(dataset, k=1, state=state)


def test_a_dataset_without_hard_negatives_is_refused(tmp_path):
    table = negatives_jsonl(tmp_path, [["x"], ["y"]])
    convert([table], str(tmp_path / "plain"), image_size=16, progress=False)
    with pytest.raises(DataConfigError, match=r"data.hard_negatives=2: data.sources\[0\] .* has no hard negatives"):
        loader(str(tmp_path / "plain"))
    assert "neg_tokens" not in next(iter(loader(str(tmp_path / "plain"), k=0)))
