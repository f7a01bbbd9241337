"""train.samples and train.epochs give the documented step count (docs/pretrain.md "Run length and batch"):
samples -> ceil(samples / global batch) steps, epochs -> ceil(epochs x loader.steps_per_epoch), in real tiny
trainings (tests/pretrain/tiny_runs.py: one child process, a world of one). The numbers are chosen so that
ceil differs from floor and from round (2.5 -> 3, 4.5 -> 5), and the epoch run crosses an epoch boundary of
the real streaming loader."""
import json

import pytest

from clipforge.modeling.config import load_config
from clipforge.pretrain.rundir import target_steps
from tests.data_pipeline.conftest import write_dataset
from tests.pretrain.tiny_run_helpers import checkpoint_tags, rows, run_tiny

BATCH = 8
SAMPLES = 20          # ceil(20 / 8) = 3 steps (floor and round: 2)
SHARD_SAMPLES = 24    # 2 shards x 12 -> 3 full batches of 8 per epoch
EPOCHS = 1.5          # ceil(1.5 x 3) = 5 steps (round(4.5) = 4, floor 4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("length")
    shards = out / "shards"
    write_dataset(shards, num_shards=2, per_shard=SHARD_SAMPLES // 2)
    reports = run_tiny(out, [
        {"name": "samples", "overrides": [f"train.samples={SAMPLES}"]},
        {"name": "epochs", "data": "stream",
         "overrides": [f"train.epochs={EPOCHS}", f"data.sources=[{{path: '{shards}'}}]", "data.workers=0"]},
    ])
    return out, reports


def _state(run_dir, tag):
    return json.loads((run_dir / "checkpoints" / tag / "trainer_state.json").read_text())


def test_target_steps_of_the_config_alone():
    cfg = lambda *o: load_config(None, ["data.sources=[{path: x}]", f"train.global_batch_size={BATCH}", *o])  # noqa: E731
    assert target_steps(cfg(f"train.samples={SAMPLES}")) == 3
    assert target_steps(cfg("train.samples=24")) == 3 and target_steps(cfg("train.samples=25")) == 4
    assert target_steps(cfg("train.samples=1")) == 1
    assert target_steps(cfg("train.steps=7")) == 7
    assert target_steps(cfg(f"train.epochs={EPOCHS}")) is None   # needs the loader's plan


def test_train_samples_runs_ceil_samples_over_batch_steps(runs):
    out, reports = runs
    assert reports["samples"]["code"] == 0
    run = out / "samples"
    assert [r["step"] for r in rows(run)] == [1, 2, 3]
    assert checkpoint_tags(run) == ["step00000003"]
    state = _state(run, "step00000003")
    assert state["step"] == 3 and state["samples_seen"] == 3 * BATCH


def test_train_epochs_runs_ceil_epochs_times_steps_per_epoch(runs):
    out, reports = runs
    assert reports["epochs"]["code"] == 0
    run = out / "epochs"
    logged = rows(run)
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]
    # epoch = step / steps_per_epoch (3): the run went past the end of the first epoch into the second
    assert logged[2]["epoch"] == pytest.approx(1.0) and logged[-1]["epoch"] == pytest.approx(5 / 3)
    assert checkpoint_tags(run) == ["step00000005"]
    state = _state(run, "step00000005")
    assert state["step"] == 5 and state["samples_seen"] == 5 * BATCH
