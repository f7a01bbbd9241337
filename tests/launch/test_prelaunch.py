"""Mistakes caught before any process starts: one line on stderr, exit 2, no traceback, before DeepSpeed
is imported (~7 s alone), from `launch local`, `launch slurm` and `pretrain` alike (the launchers import no
torch at all); GPU-aware defaults of both launchers; `clipforge --version`."""
import os
from pathlib import Path

import pytest

from ..heavy_imports import run_entry
from .launch_helpers import REPO, clipforge, marker_dataset, write_config

COMMANDS = {
    "local": ("launch", "local"),
    "slurm": ("launch", "slurm", "--python", "/opt/venv/bin/python"),
    "pretrain": ("pretrain",),
}


def _one_line_error(result, heavy: set) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "deepspeed" not in heavy, heavy
    return result.stderr


def _timed(*args, env=None, cwd=None):
    """-> (result, the heavy libraries imported): launch commands import none, pretrain no DeepSpeed."""
    result, heavy = run_entry("clipforge.launch.cli", args, env=env, cwd=cwd)
    if args[0] == "launch":
        assert not heavy, heavy
    return result, heavy


@pytest.fixture
def base(tmp_path) -> Path:
    """A config that passes every check (its data is a marker folder: no rank reads it here)."""
    return write_config(tmp_path / "c.yaml", str(tmp_path / "run"), marker_dataset(tmp_path / "shards"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("override, needle", [
    ("data.sources=[{path: /nope/shards}]", "data.sources[0].path='/nope/shards'"),
    ("data.sources=[{path: /tmp}]", "not a shard dataset"),
    ("data.sources=[{path: '/nope/shard-{000000..000003}.tar'}]", "shard /nope/shard-000000.tar not found"),
    ("data.val_path=/nope/val", "data.val_path='/nope/val'"),
    ("model.name=ViT-B-33", "model.name='ViT-B-33': not an open_clip model"),
    ("model.name=/nope/model.json", "no such model-config JSON"),
    ("model.hf_text_dir=/nope/minilm", "model.hf_text_dir='/nope/minilm': no such directory"),
    ("train.device=tpu", "train.device='tpu': allowed values are auto, cpu, cuda"),
    ("lr=1e-4", "did you mean optim.lr=1e-4?"),
])
def test_each_mistake_is_one_line_exit_2_within_2_s(base, tmp_path, command, override, needle):
    result, heavy = _timed(*COMMANDS[command], "--config", str(base), override)
    assert needle in _one_line_error(result, heavy)
    assert not (tmp_path / "run").exists()   # nothing was started or written


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_flag_spelling_of_a_config_key_suggests_the_dotted_key(base, command):
    result, heavy = _timed(*COMMANDS[command], "--config", str(base), "--lr", "1e-4")
    assert "unknown option --lr" in _one_line_error(result, heavy)
    assert "did you mean optim.lr=1e-4?" in result.stderr


def test_dry_run_reports_a_missing_path_but_still_prints_the_command(base):
    # a dry run is often made away from the cluster's file systems: a warning, the command, exit 0
    result = clipforge("launch", "local", "--config", str(base), "--dry-run", "data.val_path=/nope/val")
    assert result.returncode == 0 and "clipforge.pretrain.torchrun" in result.stdout
    assert "warning: data.val_path='/nope/val'" in result.stderr


def _fake_nvidia_smi(folder: Path, gpus: int) -> dict:
    """A PATH whose nvidia-smi lists `gpus` GPUs, as `nvidia-smi -L` prints them."""
    folder.mkdir()
    tool = folder / "nvidia-smi"
    lines = "".join(f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})'\n" for i in range(gpus))
    tool.write_text(f"#!/bin/sh\n{lines}")
    tool.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return dict(env, PATH=f"{folder}{os.pathsep}{env['PATH']}")


def test_launch_local_uses_one_rank_per_visible_gpu(base, tmp_path):
    env = _fake_nvidia_smi(tmp_path / "bin", 4)
    gpu = clipforge("launch", "local", "--config", str(base), "train.device=auto", "train.global_batch_size=8",
                    "--dry-run", env=env)
    assert gpu.returncode == 0 and "--nproc-per-node=4" in gpu.stdout, gpu.stderr
    # a CPU config keeps one rank by default, GPUs or not
    cpu = clipforge("launch", "local", "--config", str(base), "--dry-run", env=env)
    assert "--nproc-per-node=1" in cpu.stdout
    result, heavy = _timed("launch", "local", "--config", str(base), "train.device=cuda", "--nproc", "8", env=env)
    assert "--nproc 8 but only 4 CUDA device(s) are visible" in _one_line_error(result, heavy)
    hidden = dict(env, CUDA_VISIBLE_DEVICES="")
    result, heavy = _timed("launch", "local", "--config", str(base), "train.device=cuda", env=hidden)
    assert "no CUDA device is visible" in _one_line_error(result, heavy)


def test_slurm_gpu_recipe_needs_gpus_per_node_and_gets_cpus_for_its_loaders():
    recipe = "configs/vit-b-32-1node.yaml"   # 8 GPUs, data.workers=8, data on /data (a warning in a dry run)
    result, heavy = _timed("launch", "slurm", "--config", recipe, "--dry-run", cwd=REPO)
    assert "give --gpus-per-node G" in _one_line_error(result, heavy)
    script = clipforge("launch", "slurm", "--config", recipe, "--dry-run", "--gpus-per-node", "8", cwd=REPO)
    assert script.returncode == 0, script.stderr
    # torchrun launcher: one task per node runs 8 ranks, each with 8 loader workers
    assert "#SBATCH --gpus-per-node=8" in script.stdout and "#SBATCH --cpus-per-task=72" in script.stdout
    per_rank = clipforge("launch", "slurm", "--config", recipe, "--dry-run", "--gpus-per-node", "8",
                         "--launcher", "srun", cwd=REPO)
    assert "#SBATCH --ntasks-per-node=8" in per_rank.stdout and "#SBATCH --cpus-per-task=9" in per_rank.stdout


def test_slurm_refuses_gpus_for_a_cpu_config(base):
    result, heavy = _timed("launch", "slurm", "--config", str(base), "--gpus-per-node", "4", "--dry-run")
    assert "with a CPU config" in _one_line_error(result, heavy)
    cpu = clipforge("launch", "slurm", "--config", str(base), "--procs-per-node", "2", "--dry-run")
    assert "--gpus-per-node" not in cpu.stdout and "#SBATCH --cpus-per-task=2" in cpu.stdout   # workers: 0


def test_version():
    result = clipforge("--version")
    assert result.returncode == 0 and result.stdout.startswith("clipforge 0.1.0")
    setup_version = next(line.split("=")[1].strip() for line in (REPO / "setup.cfg").read_text().splitlines()
                         if line.startswith("version"))
    assert result.stdout.split()[1] == setup_version
    assert result.stdout.count("\n") == 1


@pytest.mark.multiprocess
def test_a_rank_user_error_ends_launch_local_in_that_line(train_shards, tmp_path):
    """A mistake only a rank finds (a shard the manifest lists is gone; launch checks the first and last):
    launch prints the rank's line and exits 2, not torchrun's ChildFailedError dump and exit 1."""
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(train_shards, broken)
    (broken / "shard-000001.tar").unlink()
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), str(broken))
    result = clipforge("launch", "local", "--config", str(cfg), "--nproc", "2", timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1] == f"clipforge pretrain: 1 of 3 shards not found: {broken}/shard-000001.tar"
    assert "ChildFailedError" not in result.stderr and "Traceback" not in result.stderr
