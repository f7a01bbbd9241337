"""The global sample plan (no I/O): coverage per epoch, windowed shuffle, mixing weights, resampling."""
import numpy as np
import pytest

from clipforge.data_pipeline.stream.plan import SamplePlan, SourceOrder

SIZES = [7, 10, 3, 12, 8]  # 40 samples in 5 shards of uneven sizes


def flat_ids(order: SourceOrder, shards, indices):
    starts = np.concatenate([[0], np.cumsum(order.sizes)[:-1]])
    return starts[shards] + indices


def run_plan(plan: SamplePlan, steps: int, state=None):
    state = state or plan.initial_state()
    batches = []
    for _ in range(steps):
        rows, _, state = plan.global_batch(state)
        batches.append(rows)
    return batches, state


@pytest.mark.parametrize("window", [1, 6, 40, 1000])
def test_each_epoch_is_a_permutation_and_epochs_differ(window):
    order = SourceOrder(0, SIZES, seed=3, window=window, resampled=False)
    shards, indices, cursor = order.take([0, 0], 3 * 40)
    assert cursor == [3, 0]
    assert np.all(indices < np.asarray(SIZES)[shards])
    ids = flat_ids(order, shards, indices)
    epochs = ids.reshape(3, 40)
    for e in epochs:
        assert sorted(e.tolist()) == list(range(40))
    assert not np.array_equal(epochs[0], epochs[1])


def test_window_limits_how_far_a_sample_moves():
    # With no shard shuffle possible (one shard), window W keeps every sample inside its block of W.
    order = SourceOrder(0, [100], seed=1, window=10, resampled=False)
    ordinals = np.arange(100)
    _, indices, _ = order.take([0, 0], 100)
    assert np.array_equal(indices // 10, ordinals // 10)
    assert not np.array_equal(indices, ordinals)


def test_plan_is_pure_and_resumes_exactly():
    plan = SamplePlan([SIZES], [1.0], mode="epoch", seed=5, window=6, global_batch_size=8, drop_last=True)
    full, _ = run_plan(plan, 12)
    again = SamplePlan([SIZES], [1.0], mode="epoch", seed=5, window=6, global_batch_size=8, drop_last=True)
    first, state = run_plan(again, 5)
    rest, _ = run_plan(again, 7, state)
    for a, b in zip(full, first + rest):
        assert np.array_equal(a, b)
    other_seed, _ = run_plan(SamplePlan([SIZES], [1.0], mode="epoch", seed=6, window=6, global_batch_size=8,
                                        drop_last=True), 12)
    assert not all(np.array_equal(a, b) for a, b in zip(full, other_seed))


def test_drop_last_carries_leftover_samples_over_never_skips():
    # 40 samples, batch 12: 3 steps (36 positions) per epoch; the sequence never skips or repeats
    # a sample within each run of 40 consecutive positions.
    plan = SamplePlan([SIZES], [1.0], mode="epoch", seed=0, window=6, global_batch_size=12, drop_last=True)
    assert plan.steps_per_epoch == 3
    batches, state = run_plan(plan, 9)
    ids = flat_ids(plan.sources[0], *np.concatenate(batches)[:, 2:].T)
    for start in range(0, 80, 40):
        assert sorted(ids[start:start + 40].tolist()) == list(range(40))
    assert state["position"] == 108 and state["consumed"] == [108] and state["cursors"] == [[2, 28]]


def test_no_drop_last_ends_each_epoch_with_a_short_batch():
    plan = SamplePlan([SIZES], [1.0], mode="epoch", seed=0, window=6, global_batch_size=12, drop_last=False)
    assert plan.steps_per_epoch == 4
    assert [plan.batch_size_at(s) for s in range(8)] == [12, 12, 12, 4] * 2


def test_rank_slices_partition_each_global_batch():
    plan = SamplePlan([SIZES], [1.0], mode="epoch", seed=0, window=6, global_batch_size=10, drop_last=True)
    for world in (1, 2, 3, 4):
        per_rank = [list(plan.requests(plan.initial_state(), r, world)) for r in range(world)]
        for step in range(plan.steps_per_epoch):
            joined = np.concatenate([per_rank[r][step].items for r in range(world)])
            assert np.array_equal(joined, plan.global_batch({"step": step, "position": step * 10, "consumed": [step * 10],
                                                             "cursors": [[0, step * 10]]})[0])


def test_mixing_weights_hold_and_each_source_walks_its_own_epochs():
    # Weights 3:1 over sources of 40 and 25 samples: over 20,000 positions the share of source 0
    # is 0.75 within 0.01 (binomial sd = 0.003, so > 3 sd of slack).
    plan = SamplePlan([SIZES, [25]], [3.0, 1.0], mode="epoch", seed=2, window=6, global_batch_size=50,
                      drop_last=True)
    batches, state = run_plan(plan, 400)
    rows = np.concatenate(batches)
    share = float((rows[:, 1] == 0).mean())
    assert abs(share - 0.75) < 0.01
    assert state["consumed"][0] + state["consumed"][1] == 20000
    src1 = rows[rows[:, 1] == 1]
    first_epoch = src1[:25, 3]
    assert sorted(first_epoch.tolist()) == list(range(25))


def test_resampled_draws_shards_with_replacement_every_sample_equally_likely():
    plan = SamplePlan([SIZES], [1.0], mode="resampled", seed=4, window=6, global_batch_size=400, drop_last=True)
    batches, _ = run_plan(plan, 50)  # 20,000 samples ~ 2,500 shard draws of 5 shards: 500 per sample
    ids = flat_ids(plan.sources[0], *np.concatenate(batches)[:, 2:].T)
    counts = np.bincount(ids, minlength=40)
    assert counts.min() > 400 and counts.max() < 600  # draws per shard: binomial sd 20, bounds 5 sd
    # With replacement: some source epoch draws a shard twice (its samples repeat within the epoch).
    epochs = [plan.sources[0].shard_order(e)[0] for e in range(20)]
    assert any(len(set(order.tolist())) < len(SIZES) for order in epochs)
    # Reading stays local: 6 consecutive positions touch < 2 shards on average (independent
    # per-sample draws of equally likely shards would touch 3.7 of the 5).
    rows = np.concatenate(batches)
    assert np.mean([len(set(rows[i:i + 6, 2].tolist())) for i in range(0, 6000, 6)]) < 2
