"""A rollback with the real streaming loader (one loader worker; tests/pretrain/tiny_runs.py, a world of one):
the loader is rebuilt at the checkpoint's position and the skipped batches are read past. Non-finite losses at
steps 3-4 with train.max_nonfinite_steps=2 roll back to step 2. Skipping nothing replays the same batches:
the losses after the rollback equal the uninterrupted run's, exactly. Skipping 2: the final data state is the
uninterrupted run's 2 steps later (the loader consumed the 2 skipped batches)."""
import json

import pytest

from tests.data_pipeline.conftest import write_dataset
from tests.pretrain.tiny_run_helpers import rows, run_tiny


def data_state(run_dir, tag):
    return json.loads((run_dir / "checkpoints" / tag / "trainer_state.json").read_text())["data"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("rollback_stream")
    shards = out / "shards"
    write_dataset(shards, num_shards=2, per_shard=48)   # 12 batches of 8 per epoch: no epoch boundary
    common = [f"data.sources=[{{path: '{shards}'}}]", "data.workers=1", "checkpoint.every_steps=2",
              "train.max_nonfinite_steps=2", "train.max_rollbacks=1"]
    diverging = dict(data="stream", nan_at_calls=[3, 4])
    reports = run_tiny(out, [
        dict(name="uninterrupted", data="stream", overrides=common + ["train.steps=8"]),
        dict(name="skip0", overrides=common + ["train.steps=8", "train.skip_batches_after_rollback=0"], **diverging),
        dict(name="skip2", overrides=common + ["train.steps=8", "train.skip_batches_after_rollback=2"], **diverging),
    ])
    return out, reports


def test_a_rollback_that_skips_nothing_replays_the_uninterrupted_run_exactly(runs):
    out, reports = runs
    assert reports["skip0"]["code"] == 0
    events = [r for r in rows(out / "skip0") if "event" in r]
    assert [(e["step"], e["checkpoint"], e["batches_skipped"]) for e in events] == [(4, "step00000002", 0)]
    after = [r for r in rows(out / "skip0") if "event" not in r][3:]
    reference = rows(out / "uninterrupted")[2:]
    assert [r["step"] for r in after] == [3, 4, 5, 6, 7, 8]
    assert [r["loss"] for r in after] == [r["loss"] for r in reference]


def test_skipped_batches_are_consumed_so_the_loader_state_is_past_them(runs):
    out, reports = runs
    assert reports["skip2"]["code"] == 0
    events = [r for r in rows(out / "skip2") if "event" in r]
    assert [(e["step"], e["batches_skipped"]) for e in events] == [(4, 2)]
    assert data_state(out / "skip2", "step00000006") == data_state(out / "uninterrupted", "step00000008")
    assert data_state(out / "skip2", "step00000006") != data_state(out / "uninterrupted", "step00000006")
