"""`clipforge launch slurm eval`: eval runs as its own slurm job (torchrun, 2 CPU ranks sharing the
embedding work) and writes the same CLIP_benchmark JSON as `clipforge eval` in one process."""
import json

import pytest

from .conftest import submitted_job_ids, wait_for_job
from .launch_helpers import clipforge, tail

pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess]


def test_eval_job_equals_single_process_eval(slurm_cluster, reference_run, val_shards, tmp_path):
    common = ["--model", str(reference_run), "--data", str(val_shards), "--task", "retrieval", "--device", "cpu",
              "--batch-size", "4", "--quiet"]
    local = clipforge("eval", *common, "--out", str(tmp_path / "local.json"), timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]

    job_dir = tmp_path / "eval job"
    result = clipforge("launch", "slurm", "eval", "--job-dir", str(job_dir), "--procs-per-node", "2", "--",
                       *common, "--out", str(job_dir / "slurm.json"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (job_id,) = submitted_job_ids(result.stdout)
    state = wait_for_job(job_id, timeout=300)
    log = tail(job_dir / f"eval-{job_id}.out", 60)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", f"{state}\n{log}"
    from_slurm = json.loads((job_dir / "slurm.json").read_text())
    from_local = json.loads((tmp_path / "local.json").read_text())
    assert from_slurm["metrics"] == from_local["metrics"] and from_slurm["task"] == "zeroshot_retrieval"
