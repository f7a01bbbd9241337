"""Resume and SIGKILL: a killed conversion, re-run, equals an uninterrupted one byte for byte; no half shard is
ever visible under its final name; worker count and node split never change the output."""
import os
import signal
import subprocess
import sys
import time

import pytest

from clipforge.data_pipeline.convert import ConvertError, convert, merge
from clipforge.data_pipeline.convert.cli import main, slurm_defaults

from .convert_inputs import caption_table

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTIONS = dict(image_size=96, samples_per_shard=6)


def output_files(out_dir) -> dict:
    """{name: bytes} of every visible (non-hidden) file; hidden names are temporaries."""
    return {name: open(os.path.join(out_dir, name), "rb").read()
            for name in sorted(os.listdir(out_dir)) if not name.startswith(".")}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return caption_table(tmp_path_factory.mktemp("raw"), count=48, captions_per_image=2, size=(480, 360))


@pytest.fixture(scope="module")
def reference(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    convert([table], str(out), progress=False, **OPTIONS)
    return output_files(out)


def _command(table, out, workers):
    return [sys.executable, "-m", "clipforge.data_pipeline", "convert", table, "--out", str(out), "--no-progress",
            "--workers", str(workers), "--image-size", str(OPTIONS["image_size"]),
            "--samples-per-shard", str(OPTIONS["samples_per_shard"])]


def _stats_count(out) -> int:
    return len([n for n in os.listdir(out) if n.endswith("_stats.json")]) if os.path.isdir(out) else 0


def _point_reached(out, point: str, stats_at_start: int) -> bool:
    names = os.listdir(out) if os.path.isdir(out) else []
    if point == "plan":  # inputs read, no shard yet
        return "convert_plan.json" in names
    if point == "temporary":  # a shard file is being written under its hidden temporary name; should the 1 ms
        # polling miss that moment, kill two shards later anyway so the run still dies mid-way
        return any(name.startswith(".shard-") for name in names) or _stats_count(out) >= stats_at_start + 2
    return _stats_count(out) >= int(point)


def _kill_at(command, out, point: str) -> int:
    """Start the conversion in its own process group; SIGKILL the group (workers too) when `point` is reached."""
    stats_at_start = _stats_count(out)
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None and not _point_reached(out, point, stats_at_start):
        time.sleep(0.001)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_at_several_points_then_rerun_equals_uninterrupted_run(table, reference, tmp_path, workers):
    out = tmp_path / "out"
    command = _command(table, out, workers)
    killed = 0
    for point in ("plan", "temporary", "3", "temporary", "6"):
        killed += _kill_at(command, out, point) == -signal.SIGKILL
        visible = output_files(out) if out.is_dir() else {}
        for name, data in visible.items():
            if name.startswith("shard-"):
                assert data == reference[name], f"{name} visible under its final name but not complete"
        assert "manifest.json" not in visible or len(visible) == len(reference)
    assert killed >= 4, "the conversion finished before most kill points: make the input bigger"
    assert subprocess.run(command, cwd=REPO, capture_output=True).returncode == 0
    assert output_files(out) == reference
    assert not [name for name in os.listdir(out) if name.startswith(".")], "stale temporaries left behind"


def test_rerun_of_a_complete_output_skips_everything(table, reference, tmp_path):
    out = tmp_path / "out"
    convert([table], str(out), progress=False, **OPTIONS)
    summary = convert([table], str(out), progress=False, **OPTIONS)
    assert summary["skipped_shards"] == summary["shards"] == 8 and summary["processed_items"] == 0
    assert summary["written"] == 48 and output_files(out) == reference


def test_other_options_into_the_same_out_are_refused(table, tmp_path):
    convert([table], str(tmp_path), progress=False, **OPTIONS)
    with pytest.raises(ConvertError, match=r"option\(s\) image_size differ"):
        convert([table], str(tmp_path), progress=False, image_size=64, samples_per_shard=6)


def test_two_nodes_then_merge_equal_one_node(table, reference, tmp_path, capsys):
    out = str(tmp_path / "out")
    first = convert([table], out, num_nodes=2, node_rank=1, progress=False, **OPTIONS)
    assert first["manifest"] is None and first["shards"] == 4 and first["input_items"] == 24
    assert main(["--merge-only", "--out", out]) == 2
    assert "4 of 8 shards are not complete (shard-000000, shard-000002" in capsys.readouterr().err
    second = convert([table], out, num_nodes=2, node_rank=0, progress=False, **OPTIONS)
    assert second["manifest"] is not None
    assert output_files(out) == reference
    assert main(["--merge-only", "--out", out]) == 0  # idempotent: same bytes again
    assert output_files(out) == reference
    assert merge(out)["num_samples"] == 48


def test_node_split_defaults_from_slurm():
    assert slurm_defaults({}) == (1, 0)
    assert slurm_defaults({"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5"}) == (4, 2)
    assert slurm_defaults({"SLURM_NTASKS": "3", "SLURM_PROCID": "2"}) == (3, 2)


def test_one_shard_split_over_workers_equals_one_worker(tmp_path):
    """A 150-item shard is processed in chunks by 2 workers: same bytes as 1 worker."""
    table = caption_table(tmp_path / "raw", count=150, size=(24, 18))
    outputs = []
    for workers in (1, 2):
        convert([table], str(tmp_path / f"out{workers}"), image_size=16, workers=workers, progress=False)
        outputs.append(output_files(tmp_path / f"out{workers}"))
    assert outputs[0] == outputs[1] and len(outputs[0]) == 6  # tar, parquet, stats, plan, sizes, manifest


def test_slurm_array_tasks_split_the_work_from_the_environment(table, reference, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    args = [table, "--out", out, "--no-progress", "--image-size", "96", "--samples-per-shard", "6"]
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
    for task in ("11", "10"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        assert main(args) == 0
    assert "24 input items -> 24 written" in capsys.readouterr().out
    assert output_files(out) == reference
