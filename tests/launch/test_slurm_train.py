"""`clipforge launch slurm` on a real slurm cluster (two fake nodes, CPU, gloo, DeepSpeed ZeRO-2):
a 2-node job trains like `launch local` on 1 node x 2 processes, and the preemption drill
(warning signal -> checkpoint -> requeue -> resume -> finish) ends with the uninterrupted losses."""
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import STEPS, job_state, submitted_job_ids, wait_for_job
from .launch_helpers import clipforge, losses, tail

pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess]


def _submit(config, run_dir: Path, *extra: str) -> str:
    result = clipforge("launch", "slurm", "--config", str(config), "--nodes", "2", *extra,
                       f"train.run_dir={run_dir}", cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr
    (job_id,) = submitted_job_ids(result.stdout)
    return job_id


def _log(run_dir: Path, job_id: str) -> str:
    return tail(run_dir / "slurm" / f"slurm-{job_id}.out", 60)


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_two_node_job_equals_one_node_two_processes(slurm_cluster, tiny_run_config, reference_losses, tmp_path,
                                                    launcher):
    # the run dir is hostile on purpose: it reaches #SBATCH --output, bash and the trainer literally
    run_dir = tmp_path / "run $(touch pwned) 'q' \"dq\" `id` 50%"
    job_id = _submit(tiny_run_config, run_dir, "--launcher", launcher)
    state = wait_for_job(job_id, timeout=400)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", f"{state}\n{_log(run_dir, job_id)}"
    assert losses(run_dir) == reference_losses
    # Both node tasks ran: each rank saved its RNG state into the checkpoint (a rank other than 0 prints
    # nothing on a quiet CPU run, so srun's "0: "/"1: " labels are no evidence).
    assert {p.name for p in run_dir.glob("checkpoints/step*/rng/rank*.json")} == {"rank0.json", "rank1.json"}
    assert (run_dir / "DONE").exists() and not list(tmp_path.rglob("pwned"))


def _wait_for_step(run_dir: Path, job_id: str, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and max(losses(run_dir), default=0) >= step:
            return
        assert job_state(job_id).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), _log(run_dir, job_id)
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached:\n{_log(run_dir, job_id)}")


def test_preemption_drill_checkpoints_requeues_resumes_and_matches(slurm_cluster, tiny_run_config,
                                                                   reference_losses, tmp_path):
    run_dir = tmp_path / "drill"
    run_dir.mkdir()
    job_id = _submit(tiny_run_config, run_dir, "--time", "10", "--signal-seconds", "60")
    _wait_for_step(run_dir, job_id, 3)
    # what slurm does --signal-seconds before the time limit (its timer has +-30 s jitter, this is exact)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)
    state = wait_for_job(job_id, timeout=400, until=lambda s: s["JobState"] == "COMPLETED" or (
        s["JobState"] in ("FAILED", "CANCELLED", "TIMEOUT") and s.get("Restarts") == "1"))
    log = _log(run_dir, job_id)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", f"{state}\n{log}"

    # one checkpoint in the middle (periodic ones are off in this config): the preemption one
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step*"))
    assert len(checkpoints) >= 1 and int(checkpoints[0][4:]) < STEPS, checkpoints
    assert "requeueing job" in log and "resuming from checkpoint" in log, log
    restarts = (run_dir / "slurm" / "restarts.log").read_text()
    assert "SLURM_RESTART_COUNT=0" in restarts and "SLURM_RESTART_COUNT=1" in restarts, restarts
    assert losses(run_dir) == reference_losses   # every step, before and after the resume

    # a finished run does not train again: resubmitting its own script ends at once, metrics untouched
    before = (run_dir / "metrics.jsonl").read_text()
    rerun = subprocess.run(["sbatch", "--parsable", str(run_dir / "slurm" / "pretrain.sbatch")],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert wait_for_job(rerun, timeout=120)["ExitCode"] == "0:0"
    assert "this run already finished" in _log(run_dir, rerun)
    assert (run_dir / "metrics.jsonl").read_text() == before
