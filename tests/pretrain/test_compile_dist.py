"""train.compile on real DeepSpeed across 2 gloo ranks: the same 20 steps eager and compiled (inductor), with
model.grad_checkpointing, at ZeRO-1, 2 and 3 (tests/pretrain/compile_worker.py trains, in one launch; the
assertions live here).

Tolerance: inductor's fused kernels add in other orders than eager's, and Adam carries the last-bit differences
on; measured here, the largest loss difference over the 20 steps was 1.4e-6 at ZeRO-1/2 and 7e-7 at ZeRO-3
(2e-5 with tiny-vit's two blocks per tower); asserted: 1e-4, the issue's bound.
Cost: inductor starts from an empty cache (a first run's; it goes with the test's folder). ZeRO-2 reuses the code
compiled for ZeRO-1 (the same graph), ZeRO-3 compiles its own (split at its gather hooks): 28 s and 20 s of
compiling, 94 s for the launch at load 2 on 2 cores, 6.6 min at load 5-6.
"""
import json
import subprocess
import sys

import pytest

from clipforge.modeling.config import load_config
from clipforge.pretrain.rundir import check_resume

from .test_rundir import _run_dir
from .test_trainer_dist import ENV, HERE, REPO, losses

WORKER = HERE / "compile_worker.py"
STAGES = (1, 2, 3)


def _rows(run_dir) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile")
    env = dict(ENV, TORCHINDUCTOR_CACHE_DIR=str(out / "inductor"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=880)
    (out / "worker.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"compile_worker failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return out, json.loads((out / "report.json").read_text())


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_compiled_losses_follow_eager_within_1e_4_over_20_steps(runs, stage):
    out, report = runs
    assert report[f"z{stage}_eager"]["code"] == 0 and report[f"z{stage}_compiled"]["code"] == 0
    eager, compiled = losses(out / f"z{stage}_eager"), losses(out / f"z{stage}_compiled")
    assert len(eager) == len(compiled) == 20
    assert max(abs(a - b) for a, b in zip(eager, compiled)) <= 1e-4, (eager, compiled)
    # Not bit for bit: a run that silently stayed eager would give exactly the eager losses.
    assert eager != compiled


@pytest.mark.multiprocess
@pytest.mark.slow
def test_the_model_is_compiled_and_the_compile_time_logged(runs):
    out, report = runs
    for stage in STAGES:
        assert report[f"z{stage}_eager"]["graphs"] == 0
        assert all("compile_s" not in row for row in _rows(out / f"z{stage}_eager"))
        rows = _rows(out / f"z{stage}_compiled")
        # once, in the row of step 2: the first step's time minus the second's
        assert [row["step"] for row in rows if "compile_s" in row] == [2]
    # ZeRO-1 builds the graphs; ZeRO-2's model runs the same ones (dynamo's guards pass), ZeRO-3 builds its own.
    assert report["z1_compiled"]["graphs"] >= 1 and report["z3_compiled"]["graphs"] >= 1
    first = next(row["compile_s"] for row in _rows(out / "z1_compiled") if "compile_s" in row)
    assert first > 1.0  # an empty inductor cache: C++ kernels built with gcc (28 s here)
    assert "train.compile: compiling took" in (out / "worker.log").read_text()


@pytest.mark.multiprocess
@pytest.mark.slow
def test_an_eager_checkpoint_resumes_compiled_and_follows_the_eager_run(runs):
    # The compiled module keeps its class and state-dict keys: DeepSpeed's checkpoint of the eager run loads as is.
    out, report = runs
    assert report["z2_resumed_compiled"]["code"] == 0
    resumed = {row["step"]: row["loss"] for row in _rows(out / "z2_resumed_compiled")}
    eager = {row["step"]: row["loss"] for row in _rows(out / "z2_eager")}
    assert sorted(resumed) == list(range(11, 21))
    assert max(abs(resumed[step] - eager[step]) for step in resumed) <= 1e-4


def test_switching_compile_on_or_off_is_a_safe_change_of_a_run_dir(tmp_path):
    config = _run_dir(tmp_path)
    point = check_resume(load_config(str(config), ["train.compile=true"]), world_size=2)
    assert point.step == 5 and point.changes == ["train.compile False -> True"]
