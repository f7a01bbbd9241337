"""Reusing a run dir: breaking changes refused in one line, safe ones allowed and listed, world size
checked, "already at step N", config.yaml's run_info. The run dirs are laid out as the trainer writes
them (config.yaml, checkpoints/latest, trainer_state.json, DeepSpeed's per-rank optimizer files); the
end-to-end runs through DeepSpeed are in tests/launch/test_rundir_reuse.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clipforge.modeling.config import ConfigError, load_config, save_config
from clipforge.pretrain.rundir import check_resume, describe, run_info

from ..heavy_imports import run_entry

REPO = Path(__file__).resolve().parents[2]


def _run_dir(tmp_path: Path, step: int = 5, ranks: int = 2, overrides=()) -> Path:
    """A run dir whose latest checkpoint is at `step`, written by `ranks` ZeRO ranks."""
    (tmp_path / "shards").mkdir(parents=True, exist_ok=True)
    (tmp_path / "shards" / "sizes.json").write_text('{"shard-000000.tar": 8}')
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "model": {"name": str(REPO / "configs/models/tiny-vit.json")},
        "data": {"sources": [{"path": str(tmp_path / "shards")}], "workers": 0},
        "train": {"run_dir": str(tmp_path / "run"), "global_batch_size": 8, "steps": 5, "device": "cpu"},
        "deepspeed": {"zero_stage": 2, "precision": "fp32"}}))
    cfg = load_config(str(config), list(overrides))
    tag = tmp_path / "run" / "checkpoints" / f"step{step:08d}"
    tag.mkdir(parents=True)
    (tag / "trainer_state.json").write_text(json.dumps({"step": step, "samples_seen": 8 * step}))
    for rank in range(ranks):
        (tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    (tag.parent / "latest").write_text(tag.name)
    save_config(cfg, str(tmp_path / "run" / "config.yaml"), run_info(list(overrides), ranks))
    return config


@pytest.mark.parametrize("override, key", [
    ("deepspeed.zero_stage=3", "deepspeed.zero_stage 2 -> 3"),
    ("deepspeed.precision=bf16", "deepspeed.precision"),
    ("model.name=ViT-B-32", "model.name"),
    ("train.global_batch_size=16", "train.global_batch_size 8 -> 16"),
    ("train.seed=1", "train.seed 0 -> 1"),
    ("data.shuffle_window=7", "data.shuffle_window"),
    ("loss.kind=siglip", "loss.kind"),
])
def test_a_change_that_breaks_resume_is_refused_naming_it(tmp_path, override, key):
    config = _run_dir(tmp_path)
    with pytest.raises(ConfigError) as err:
        check_resume(load_config(str(config), [override]), world_size=2)
    message = str(err.value)
    assert key in message and "step 5" in message and "new train.run_dir" in message and "\n" not in message


def test_changed_data_sources_are_refused(tmp_path):
    config = _run_dir(tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(ConfigError, match="data.sources"):
        check_resume(load_config(str(config), [f"data.sources=[{{path: {tmp_path / 'other'}}}]"]), world_size=2)


def test_safe_changes_resume_and_are_listed(tmp_path):
    config = _run_dir(tmp_path)
    cfg = load_config(str(config), ["train.steps=20", "optim.lr=1e-4", "eval.every_steps=3", "train.log_every=2",
                                    "checkpoint.every_steps=4", "data.workers=1"])
    point = check_resume(cfg, world_size=2)
    assert point.step == 5 and point.path.endswith("step00000005")
    assert "train.steps 5 -> 20" in point.changes and "optim.lr 0.0005 -> 0.0001" in point.changes
    assert len(point.changes) == 6
    line = describe(point, cfg)
    assert line.startswith("will resume from step 5") and "optim.lr 0.0005 -> 0.0001" in line


def test_a_fresh_run_dir_or_no_checkpoint_starts_new(tmp_path):
    config = _run_dir(tmp_path)
    cfg = load_config(str(config), [f"train.run_dir={tmp_path / 'new'}"])
    assert check_resume(cfg, world_size=1) is None
    assert describe(None, cfg).startswith("will start a new run")


def test_world_size_must_match_under_zero_but_not_zero_0(tmp_path):
    config = _run_dir(tmp_path, ranks=2)
    with pytest.raises(ConfigError, match="on 4 rank.*saved by 2.*launch 2 ranks"):
        check_resume(load_config(str(config), ["train.steps=8"]), world_size=4)
    zero0 = _run_dir(tmp_path / "z0", ranks=0, overrides=["deepspeed.zero_stage=0"])
    assert check_resume(load_config(str(zero0), ["deepspeed.zero_stage=0", "train.steps=8"]), world_size=4).step == 5


def test_explicit_resume_compares_with_the_checkpoints_own_run(tmp_path):
    config = _run_dir(tmp_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "step00000005"
    fork = [f"train.run_dir={tmp_path / 'fork'}", f"checkpoint.resume={checkpoint}", "train.steps=9"]
    assert check_resume(load_config(str(config), fork), world_size=2).step == 5
    with pytest.raises(ConfigError, match="train.seed"):
        check_resume(load_config(str(config), fork + ["train.seed=3"]), world_size=2)
    with pytest.raises(ConfigError, match="not a clipforge checkpoint"):
        check_resume(load_config(str(config), [f"checkpoint.resume={tmp_path}"]), world_size=2)


def _pretrain(*args: str):
    """`python -m clipforge.pretrain ARGS` -> (result, the heavy libraries it imported)."""
    return run_entry("clipforge.pretrain.cli", args, cwd=REPO, timeout=60)


@pytest.mark.parametrize("steps", ["5", "3"])
def test_a_finished_run_asked_for_no_more_steps_does_nothing(tmp_path, steps):
    config = _run_dir(tmp_path, step=5)
    result, heavy = _pretrain("--config", str(config), f"train.steps={steps}")
    assert result.returncode == 0, result.stderr
    assert "already at step 5" in result.stderr and result.stderr.count("\n") == 1
    assert "deepspeed" not in heavy, heavy  # decided before DeepSpeed is imported: no re-export
    assert not (tmp_path / "run" / "model.pt").exists()


def test_pretrain_refuses_a_breaking_change_before_deepspeed(tmp_path):
    config = _run_dir(tmp_path)
    result, heavy = _pretrain("--config", str(config), "deepspeed.zero_stage=3")
    assert result.returncode == 2 and "deepspeed.zero_stage 2 -> 3" in result.stderr
    assert result.stderr.count("\n") == 1 and "deepspeed" not in heavy, (result.stderr, heavy)


def test_launch_dry_run_says_where_it_resumes_and_checks_the_world_size(tmp_path):
    config = _run_dir(tmp_path, ranks=2)
    launch = [sys.executable, "-m", "clipforge.launch.cli", "launch", "local", "--config", str(config)]
    result = subprocess.run(launch + ["--nproc", "2", "--dry-run", "train.steps=8"], capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and "will resume from step 5" in result.stderr, result.stderr
    wrong = subprocess.run(launch + ["--nproc", "1", "train.steps=8"], capture_output=True, text=True, cwd=REPO,
                           timeout=60)
    assert wrong.returncode == 2 and "saved by 2" in wrong.stderr and wrong.stderr.count("\n") == 1


def test_config_yaml_records_version_commit_and_overrides_and_reads_back(tmp_path):
    config = _run_dir(tmp_path, overrides=["optim.lr=1e-4"])
    saved = tmp_path / "run" / "config.yaml"
    text = saved.read_text()
    assert "run_info:" in text and "clipforge_version: 0.1.0" in text and "- optim.lr=1e-4" in text
    assert "git_commit:" in text and "world_size: 2" in text
    # a run's config.yaml is itself a valid --config (run_info is ignored when read)
    assert load_config(str(saved)) == load_config(str(config), ["optim.lr=1e-4"])


def test_the_same_files_by_relative_paths_resume(tmp_path, monkeypatch):
    """The demo saves absolute paths; its config file names the same files relatively: the same run."""
    config = _run_dir(tmp_path)  # saved with absolute model.name and data.sources
    monkeypatch.chdir(tmp_path)
    same_model = str(REPO / "configs" / "models" / ".." / "models" / "tiny-vit.json")  # another spelling
    point = check_resume(load_config(str(config), [f"model.name={same_model}", "data.sources=[{path: shards}]"]),
                         world_size=2)
    assert point is not None and point.step == 5 and point.changes == []


@pytest.mark.parametrize("overrides, refused", [
    (["optim.layer_decay=0.8"], None),                                          # another value: the base lrs move
    (["optim.layer_decay=0.7", "optim.layer_decay_image=0.5"], None),           # the image tower was on already
    (["optim.layer_decay=null"], "optim.layer_decay 0.7 -> None"),              # both towers off: regrouped
    (["optim.layer_decay=null", "optim.layer_decay_text=0.7"], "optim.layer_decay 0.7 -> None"),  # image off
])
def test_switching_a_towers_layer_decay_on_or_off_breaks_resume(tmp_path, overrides, refused):
    config = _run_dir(tmp_path, overrides=["optim.layer_decay=0.7"])
    cfg = load_config(str(config), overrides)
    if refused is None:
        assert check_resume(cfg, world_size=2).step == 5
        return
    with pytest.raises(ConfigError) as err:
        check_resume(cfg, world_size=2)
    assert refused in str(err.value) and "new train.run_dir" in str(err.value)


def test_turning_layer_decay_on_for_one_tower_breaks_resume(tmp_path):
    config = _run_dir(tmp_path)
    with pytest.raises(ConfigError, match=r"optim\.layer_decay_text None -> 0\.7"):
        check_resume(load_config(str(config), ["optim.layer_decay_text=0.7"]), world_size=2)
