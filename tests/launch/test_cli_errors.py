"""`clipforge launch` catches user errors only (clipforge.errors.UserError: one line, exit 2); a bug inside
it -- a plain ValueError included, though ConfigError and LaunchError derive from it -- raises with its traceback
(exit 1). In process, through the `clipforge` dispatcher, for each of launch's paths: local, slurm, slurm convert."""
import pytest

from clipforge.errors import UserFileNotFound
from clipforge.launch import cli

from .launch_helpers import marker_dataset, write_config

BUGS = [RuntimeError("bug: rank 3 of 2"), ValueError("bug: invalid literal for int()"), KeyError("bug_key")]


def _raise(error: Exception):
    def broken(*args, **kwargs):
        raise error
    return broken


def _train_args(tmp_path, mode: str) -> list:
    config = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), marker_dataset(tmp_path / "shards"))
    return ["launch", mode, "--config", str(config), "--dry-run"]


PATHS = {  # launch path -> (the internal function that breaks, the command line)
    "local": ("clipforge.launch.commands.torchrun_args", lambda tmp_path: _train_args(tmp_path, "local")),
    "slurm": ("clipforge.launch.commands.render_train_script", lambda tmp_path: _train_args(tmp_path, "slurm")),
    "slurm-convert": ("clipforge.launch.slurm_jobs.convert_scripts", lambda tmp_path: [
        "launch", "slurm", "convert", "--parts", "2", "--out", str(tmp_path / "o"), "--dry-run", "--", "in.csv"]),
}


@pytest.mark.parametrize("bug", BUGS, ids=lambda error: type(error).__name__)
@pytest.mark.parametrize("path", PATHS)
def test_a_bug_inside_launch_raises_with_its_traceback(path, bug, tmp_path, monkeypatch, capsys):
    target, argv = PATHS[path]
    monkeypatch.setattr(target, _raise(bug))
    with pytest.raises(type(bug)) as raised:
        cli.main(argv(tmp_path))
    assert raised.value is bug
    assert "clipforge launch: error" not in capsys.readouterr().err


def test_a_user_error_inside_launch_is_still_one_line_exit_2(tmp_path, capsys):
    assert cli.main(_train_args(tmp_path, "local") + ["--nproc", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["clipforge launch: error: --nproc 0: must be >= 1"]


@pytest.mark.parametrize("path", PATHS)
def test_any_user_error_inside_launch_is_one_line_exit_2(path, tmp_path, monkeypatch, capsys):
    # not only ConfigError and LaunchError: every UserError subclass is the user's to fix
    target, argv = PATHS[path]
    monkeypatch.setattr(target, _raise(UserFileNotFound("x.json: no such file")))
    assert cli.main(argv(tmp_path)) == 2
    err = capsys.readouterr().err   # a dry run says first what it found in the run dir
    assert err.strip().splitlines()[-1] == "clipforge launch: error: x.json: no such file" and "Traceback" not in err
