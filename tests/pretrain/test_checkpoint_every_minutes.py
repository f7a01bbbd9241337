"""checkpoint.every_minutes: pretrain.checkpoint.CheckpointManager's time policy under a controlled clock (no
sleeping), and a real tiny training (tests/pretrain/tiny_runs.py) whose checkpoint clock advances 40 s per
step: with every_minutes=1 and step checkpoints off it checkpoints by time alone, at steps 2, 4, 6 (each save
restarts the clock), plus the final checkpoint at step 7."""
import types

import pytest

import clipforge.pretrain.checkpoint as checkpoint_module
from clipforge.pretrain.checkpoint import CheckpointManager
from tests.pretrain.tiny_run_helpers import checkpoint_tags, rows, run_tiny


@pytest.fixture
def clock(monkeypatch):
    now = {"t": 5000.0}
    monkeypatch.setattr(checkpoint_module, "time", types.SimpleNamespace(monotonic=lambda: now["t"]))
    return now


def test_due_by_time_on_rank_0_only(clock, tmp_path):
    rank0 = CheckpointManager(str(tmp_path), every_steps=0, every_minutes=2.0, keep_last=3, rank=0)
    rank1 = CheckpointManager(str(tmp_path), every_steps=0, every_minutes=2.0, keep_last=3, rank=1)
    assert not rank0.due(1)
    clock["t"] += 119.9
    assert not rank0.due(2)
    clock["t"] += 0.1                      # exactly 2 minutes since the manager started
    assert rank0.due(3) and rank0.due(4)   # stays due until a save restarts the clock
    assert not rank1.due(3)                # rank 0's clock decides (train.py all-reduces the flag)
    clock["t"] += 3600
    assert not rank1.due(5)


def test_time_off_and_steps_alone(clock, tmp_path):
    off = CheckpointManager(str(tmp_path), every_steps=0, every_minutes=0.0, keep_last=3, rank=0)
    steps = CheckpointManager(str(tmp_path), every_steps=5, every_minutes=0.0, keep_last=3, rank=1)
    clock["t"] += 10 ** 6
    assert not off.due(1) and not off.due(1000)
    assert [s for s in range(1, 16) if steps.due(s)] == [5, 10, 15]


def test_a_training_checkpoints_by_time(tmp_path):
    reports = run_tiny(tmp_path, [
        {"name": "by_time", "clock_s_per_step": 40.0,
         "overrides": ["train.steps=7", "checkpoint.every_steps=0", "checkpoint.every_minutes=1",
                       "checkpoint.keep_last=10"]},
        {"name": "time_off", "clock_s_per_step": 40.0,
         "overrides": ["train.steps=7", "checkpoint.every_steps=0", "checkpoint.every_minutes=0",
                       "checkpoint.keep_last=10"]},
    ])
    assert reports["by_time"]["code"] == 0 and reports["time_off"]["code"] == 0
    assert [r["step"] for r in rows(tmp_path / "by_time")] == list(range(1, 8))
    # clock after step s: 40 s x s; due at >= 60 s since the last save: steps 2 (80 s), 4 (160), 6 (240)
    assert checkpoint_tags(tmp_path / "by_time") == ["step00000002", "step00000004", "step00000006",
                                                     "step00000007"]
    assert (tmp_path / "by_time" / "checkpoints" / "latest").read_text() == "step00000007"
    assert checkpoint_tags(tmp_path / "time_off") == ["step00000007"]   # only the final one
