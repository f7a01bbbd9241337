"""`clipforge --help` and every subcommand's --help print usage with an example, via the real entry point."""
import subprocess
import sys

import pytest

from clipforge.launch.cli import COMMANDS


def _clipforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipforge.launch.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command():
    result = _clipforge("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "example" in result.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_has_help_with_an_example(command):
    result = _clipforge(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower() and "example" in result.stdout.lower(), result.stdout


def test_unknown_command_is_one_clear_line():
    result = _clipforge("trian")
    assert result.returncode == 2
    assert "unknown command 'trian'" in result.stderr and result.stderr.count("\n") == 1
