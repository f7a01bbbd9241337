"""Storage faults on real single-process trainings (tests/pretrain/tiny_runs.py, DeepSpeed ZeRO-0 on gloo):
a latest checkpoint with a flipped byte or a truncated file is passed over for the previous one, with a
warning naming the file; a save that fills the disk part-way leaves the previous checkpoint intact and stops
the run with exit 74 and a message saying so; a normal resume verifies the checksums (its cost is logged)."""
import os
import re

import pytest

from clipforge.pretrain.checkpoint_integrity import problem
from tests.pretrain.tiny_run_helpers import checkpoint_tags, losses, run_tiny

MODEL_FILE = "checkpoints/step00000003/mp_rank_00_model_states.pt"


def again(name: str, out, steps: int, **extra) -> dict:
    """A second start of run `name` (its own report name, the same run dir)."""
    return dict(name=f"{name}_again", overrides=[f"train.steps={steps}", f"train.run_dir={out / name}",
                                                 "checkpoint.every_steps=1"], **extra)


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults")
    first = ["train.steps=3", "checkpoint.every_steps=1"]
    runs = [dict(name="flipped", overrides=first),
            again("flipped", out, 4, damage=[{"file": f"flipped/{MODEL_FILE}", "how": "flip"}]),
            dict(name="truncated", overrides=first),
            again("truncated", out, 4, damage=[{"file": f"truncated/{MODEL_FILE}", "how": "truncate"}]),
            dict(name="nospace", overrides=first, enospc_at_write=3),
            again("nospace", out, 3)]
    return out, run_tiny(out, runs), (out / "tiny_runs.log").read_text()


@pytest.mark.parametrize("name, what", [("flipped", "fails its sha256 checksum (corrupted)"),
                                        ("truncated", "truncated or overwritten")])
def test_a_damaged_latest_is_passed_over_for_the_previous_checkpoint_with_a_warning(faults, name, what):
    out, reports, log = faults
    assert reports[name]["code"] == 0 and reports[f"{name}_again"]["code"] == 0
    bad = out / name / MODEL_FILE
    assert re.search(rf"warning: checkpoint step00000003 passed over: {re.escape(str(bad))}: .*{re.escape(what)}", log)
    assert f"resumed from {out / name / 'checkpoints' / 'step00000002'} at step 2" in log
    # Resumed from step 2: its step 3 is the first run's step 3 again, exactly; step 3 is saved anew, intact.
    first, second = losses(out / name)[:3], losses(out / name)[3:]
    assert second[0] == first[2] and len(second) == 2
    assert problem(str(out / name / "checkpoints" / "step00000003")) is None


def test_a_save_that_fills_the_disk_leaves_the_previous_checkpoint_intact_and_stops_with_74(faults):
    out, reports, log = faults
    assert reports["nospace"]["code"] == 74
    assert re.search(r"stopping: checkpoint step00000003 could not be written \(rank 0: \[Errno 28\] No space left "
                     r"on device: '[^']*\.tmp-step00000003[^']*'\); it was removed and \S*latest still names the "
                     r"previous checkpoint \(step00000002\), which is intact: free space in \S+ "
                     r"\([\d.]+ GB free now\) and resume \(exit 74\)", log)
    # The next start (same run dir) finds latest = step 2, intact: nothing passed over, no leftover .tmp folder.
    next_start = log.split("could not be written", 1)[1]
    assert "checkpoint step00000002 verified" in next_start and "passed over" not in next_start
    assert not [n for n in os.listdir(out / "nospace" / "checkpoints") if n.startswith(".tmp")]


def test_a_normal_resume_verifies_the_checksums_and_logs_the_cost(faults):
    out, reports, log = faults
    assert reports["nospace_again"]["code"] == 0
    cost = re.search(r"checkpoint step00000002 verified: (\d+) files, ([\d.]+) MB in ([\d.]+) s \((\d+) MB/s\)", log)
    assert cost and int(cost.group(1)) >= 3 and float(cost.group(2)) > 50   # tiny-vit + Adam: ~116 MB
    assert f"resumed from {out / 'nospace' / 'checkpoints' / 'step00000002'} at step 2" in log
    assert losses(out / "nospace")[3] == losses(out / "nospace")[2]   # step 3 again, from step 2: the same
    assert checkpoint_tags(out / "nospace") == ["step00000001", "step00000002", "step00000003"]
