"""`clipforge launch slurm convert`: a real slurm array converts one dataset in 2 parts, a dependent
job merges; the merged manifest equals a single-process conversion's. The output path is hostile
(spaces, quotes, `$(...)`): it reaches the converter literally and runs nothing."""
import json

import pytest

from .conftest import submitted_job_ids, wait_for_job
from .launch_helpers import clipforge, tail

pytestmark = [pytest.mark.slurm]


def test_array_conversion_in_two_parts_equals_one_process(slurm_cluster, raw_dataset, tmp_path):
    common = ["--format", "csv", "--image-size", "32", "--samples-per-shard", "10", "--keep-cols", "shape"]
    single = tmp_path / "single"
    result = clipforge("convert", str(raw_dataset), "--out", str(single), "--no-progress", *common, timeout=300)
    assert result.returncode == 0, result.stderr

    hostile = tmp_path / "out $(touch pwned) 'q' \"dq\" `id`"
    result = clipforge("launch", "slurm", "convert", "--parts", "2", "--out", str(hostile / "shards"),
                       "--", str(raw_dataset), *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    array_id, merge_id = submitted_job_ids(result.stdout)
    job_dir = hostile / "shards.slurm"
    for job_id in (array_id, merge_id):
        state = wait_for_job(job_id, timeout=240)
        logs = "\n".join(tail(p) for p in sorted(job_dir.glob("*.out")))
        assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", f"{state}\n{logs}"
    logs = sorted(p.name for p in job_dir.glob("*.out"))
    assert logs == [f"convert-{array_id}_0.out", f"convert-{array_id}_1.out", f"merge-{merge_id}.out"]

    merged = json.loads((hostile / "shards" / "manifest.json").read_text())
    expected = json.loads((single / "manifest.json").read_text())
    assert len(merged["shards"]) >= 2   # both array tasks had shards to write
    assert merged == expected
    assert (hostile / "shards" / "sizes.json").read_text() == (single / "sizes.json").read_text()
    assert not list(tmp_path.rglob("pwned"))


def test_convert_flags_owned_by_launch_are_refused(tmp_path):
    result = clipforge("launch", "slurm", "convert", "--parts", "2", "--out", "o", "--dry-run", "--", "in.csv",
                       "--node-rank", "1")
    assert result.returncode == 2 and "--node-rank" in result.stderr
