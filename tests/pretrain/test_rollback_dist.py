"""Rollback on divergence (pretrain/rollback.py) on real DeepSpeed ZeRO-2 across 2 gloo processes
(tests/pretrain/ds_worker.py's `rollback` mode trains; the assertions live here). Non-finite losses are
injected at steps 3-4 on rank 0 only, a loss spike at step 4 on rank 1 only: every rank rolls back together.
And a checkpoint write that fails on rank 1 only: every rank stops (the save protocol's 2-rank half)."""
import json

import pytest

from clipforge.pretrain.checkpoint_integrity import problem
from tests.pretrain.test_trainer_dist import _launch, max_diff, weights

pytestmark = pytest.mark.multiprocess


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_rows(run_dir):
    return [r for r in rows(run_dir) if "event" not in r]


@pytest.fixture(scope="module")
def rolled(tmp_path_factory):
    out = tmp_path_factory.mktemp("rollback")
    return out, _launch("rollback", out, 2)


def test_non_finite_steps_roll_back_once_and_the_run_finishes(rolled):
    out, codes = rolled
    assert codes["rb"] == 0
    events = [r for r in rows(out / "rb") if "event" in r]
    assert [{k: v for k, v in e.items() if k != "time"} for e in events] == [
        {"event": "rollback", "step": 4, "reason": "2 consecutive non-finite steps (train.max_nonfinite_steps=2)",
         "checkpoint": "step00000002", "to_step": 2, "batches_skipped": 2, "rollback": 1}]
    assert [r["step"] for r in train_rows(out / "rb")] == [1, 2, 3, 3, 4, 5]   # step 3 (non-finite) was logged
    assert "reloaded step00000002, skipped the next 2 batches" in (out / "rollback.log").read_text()


def test_after_the_rollback_the_run_equals_a_resume_by_hand_with_the_same_batches_skipped(rolled):
    out, codes = rolled
    assert codes["rb_by_hand"] == 0
    after = train_rows(out / "rb")[3:]
    by_hand = train_rows(out / "rb_by_hand")
    assert [r["step"] for r in by_hand] == [3, 4, 5]
    assert [r["loss"] for r in after] == [r["loss"] for r in by_hand]
    assert [r["samples_seen"] for r in after] == [r["samples_seen"] for r in by_hand]
    assert max_diff(weights(out / "rb"), weights(out / "rb_by_hand")) == 0.0


def test_diverging_again_after_max_rollbacks_stops_with_exit_3_naming_the_checkpoint(rolled):
    out, codes = rolled
    assert codes["rb_exhausted"] == 3
    assert ("stopping: 2 consecutive non-finite steps (train.max_nonfinite_steps=2) after 1 rollback(s) "
            "(train.max_rollbacks=1); last good checkpoint: step00000002") in (out / "rollback.log").read_text()
    assert [r["step"] for r in train_rows(out / "rb_exhausted")] == [1, 2, 3, 3]


def test_a_spike_seen_by_one_rank_rolls_every_rank_back(rolled):
    out, codes = rolled
    assert codes["rb_spike"] == 0
    events = [r for r in rows(out / "rb_spike") if "event" in r]
    assert len(events) == 1 and events[0]["reason"] == "a loss spike on another rank"   # rank 0 saw none
    assert (events[0]["checkpoint"], events[0]["batches_skipped"]) == ("step00000002", 1)
    assert [r["step"] for r in train_rows(out / "rb_spike")] == [1, 2, 3, 3, 4, 5]


def test_a_checkpoint_write_failing_on_one_rank_stops_every_rank_with_74_and_keeps_the_previous(rolled):
    # (in this launch for its 2 ranks: storage faults in one process are tests/pretrain/test_checkpoint_faults.py)
    out, codes = rolled
    assert codes["nospace"] == 74                       # rank 0 wrote its files; rank 1's disk was full
    checkpoints = out / "nospace" / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step00000002"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["step00000001", "step00000002"]
    assert problem(str(checkpoints / "step00000002")) is None
    assert "checkpoint step00000003 could not be written (rank 1: [Errno 28] No space left on device" \
        in (out / "rollback.log").read_text()
