"""pretrain/rollback.py's divergence watch and pretrain/feed.py's restart + skip, without DeepSpeed; the
divergence keys' validation. The rollback itself, on real DeepSpeed across 2 ranks:
tests/pretrain/test_rollback_dist.py."""
import types

import pytest

from clipforge.modeling.config import ConfigError, TrainConfig, load_config
from clipforge.pretrain.feed import DataFeed
from clipforge.pretrain.rollback import DivergenceWatch
from tests.pretrain.synthetic import SyntheticLoader


def step(loss, applied=True, overflow=False):
    return types.SimpleNamespace(loss=loss, applied=applied, overflow=overflow, grad_norm=None if not applied else 1.0)


def fresh_state():
    return {"step": 0, "nonfinite_total": 0, "nonfinite_consecutive": 0, "overflow_total": 0, "recent_losses": []}


def test_non_finite_steps_in_a_row_diverge_and_an_applied_step_resets_the_count():
    watch, state = DivergenceWatch(TrainConfig(max_nonfinite_steps=2), rank=1), fresh_state()
    assert watch.after_step(step(float("nan"), applied=False), state) is None
    assert watch.after_step(step(2.0), state) is None
    assert watch.after_step(step(float("nan"), applied=False), state) is None
    assert watch.after_step(step(2.0, applied=False, overflow=True), state) is None  # fp16 overflow: not counted
    assert watch.after_step(step(float("inf"), applied=False), state) == \
        "2 consecutive non-finite steps (train.max_nonfinite_steps=2)"
    assert (state["nonfinite_total"], state["overflow_total"]) == (3, 1)


def test_a_spike_is_judged_against_the_median_of_the_window_and_kept_out_of_it():
    watch, state = DivergenceWatch(TrainConfig(spike_factor=2.0, spike_window=3), rank=1), fresh_state()
    for loss in (9.0, 1.0, 1.2):            # the window fills: nothing judged before
        assert watch.after_step(step(loss), state) is None
    assert watch.after_step(step(2.3), state) is None            # 2.3 <= 2 x median(9, 1, 1.2) = 2.4
    assert state["recent_losses"] == [1.0, 1.2, 2.3]             # the last 3
    assert watch.after_step(step(4.7), state) == \
        "loss 4.7000 > train.spike_factor=2.0 x 1.2000 (the median of the last 3 losses)"
    assert state["recent_losses"] == [1.0, 1.2, 2.3]


def test_spikes_are_off_by_default():
    watch, state = DivergenceWatch(TrainConfig(), rank=1), fresh_state()
    for loss in [1.0] * 200 + [1e9]:
        assert watch.after_step(step(loss), state) is None
    assert state["recent_losses"] == []


def test_a_feed_restarts_at_a_saved_position_and_skipped_batches_advance_its_state():
    make = lambda state: SyntheticLoader(0, 4, 0, 1, 8, 4, steps_per_epoch=6, state=state)  # noqa: E731
    feed = DataFeed(make)
    first = [feed.next()["tokens"] for _ in range(3)]
    feed.restart({"position": 1})
    assert feed.skip(1) == 1 and feed.state_dict() == {"position": 2}
    assert feed.next()["tokens"].equal(first[2])
    assert feed.skip(10) == 3 and feed.next() is None             # the epoch ran out


@pytest.mark.parametrize("override, message", [
    ("train.spike_factor=1", "train.spike_factor=1.0: must be > 1"),
    ("train.spike_window=0", "train.spike_window=0: must be >= 1"),
    ("train.max_rollbacks=-1", "train.max_rollbacks=-1: must be >= 0"),
    ("train.skip_batches_after_rollback=-1", "train.skip_batches_after_rollback=-1: must be >= 0"),
    ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps=0: must be >= 1"),
])
def test_divergence_keys_are_validated_up_front(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["train.steps=3", "data.sources=[{path: synthetic}]", override])
