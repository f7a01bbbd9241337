"""data.hard_negatives in real tiny trainings (tests/pretrain/tiny_runs.py: DeepSpeed, a world of one, the real
loader over `clipforge convert --neg-caption-col` shards): the negatives reach the loss (the first step's loss,
same weights and batch, is higher with them), accumulated micro-batches give the same losses as one batch, and
the option is in RUN/config.yaml and in the checkpoint's loader state."""
import json

import pytest

from tests.data_pipeline.test_convert_hard_negatives import negatives_jsonl
from tests.pretrain.tiny_run_helpers import checkpoint_tags, losses, run_tiny
from clipforge.data_pipeline.convert import convert


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("negatives")
    table = negatives_jsonl(out, [[f"a photo of thing {i + 1}", f"a photo of thing {i + 2}"] for i in range(16)])
    convert([table], str(out / "shards"), image_size=64, progress=False, neg_caption_col="negs")
    data = [f"data.sources=[{{path: '{out / 'shards'}'}}]", "data.workers=0", "train.steps=2",
            "checkpoint.every_steps=2"]
    reports = run_tiny(out, [
        {"name": "plain", "data": "stream", "overrides": data},
        {"name": "negatives", "data": "stream", "overrides": data + ["data.hard_negatives=2"]},
        {"name": "accumulated", "data": "stream", "overrides": data + ["data.hard_negatives=2",
                                                                        "train.micro_batch_size=4"]},
    ])
    return out, reports


@pytest.mark.multiprocess
def test_a_train_step_with_hard_negatives(runs):
    out, reports = runs
    assert {name: r["code"] for name, r in reports.items()} == {"plain": 0, "negatives": 0, "accumulated": 0}
    plain, negatives, accumulated = (losses(out / name) for name in ("plain", "negatives", "accumulated"))
    assert len(negatives) == 2 and negatives[0] > plain[0] + 1e-3
    assert accumulated == pytest.approx(negatives, rel=0, abs=1e-6)
    assert "hard_negatives: 2" in (out / "negatives" / "config.yaml").read_text()
    (tag,) = checkpoint_tags(out / "negatives")
    state = json.loads((out / "negatives" / "checkpoints" / tag / "trainer_state.json").read_text())
    assert state["data"]["hard_negatives"] == 2 and state["data"]["negatives_padded"] == 0
