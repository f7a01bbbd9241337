"""`clipforge pretrain` catches user errors only (clipforge.errors.UserError: one line, exit 2); a bug inside
training (here: the loss raising a plain ValueError, as a shape bug would) exits 1 with its traceback."""
import subprocess
import sys
from pathlib import Path

from tests.launch.launch_helpers import marker_dataset, write_config

REPO = Path(__file__).resolve().parents[2]

# The real CLI entry point, with the in-memory loader (the marker dataset is never read) and a loss that fails.
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from clipforge.pretrain import run as run_module
from clipforge.pretrain.cli import main
from synthetic import synthetic_factory
real_run = run_module.run

def broken_loss(loss_fn):
    def loss(*args, **kwargs):
        raise {error}
    return loss

def run(cfg, **kwargs):
    return real_run(cfg, data_factory=synthetic_factory, loss_wrapper=broken_loss, **kwargs)

run_module.run = run
sys.exit(main(["--config", sys.argv[1]]))
"""


def _pretrain_with_failing_loss(tmp_path: Path, error: str) -> subprocess.CompletedProcess:
    config = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), marker_dataset(tmp_path / "shards"), steps=2)
    code = SCRIPT.format(tests=str(REPO / "tests" / "pretrain"), error=error)
    return subprocess.run([sys.executable, "-c", code, str(config)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_a_bug_inside_training_exits_1_with_its_traceback(tmp_path):
    result = _pretrain_with_failing_loss(tmp_path, 'ValueError("shape bug: [8, 64] vs [8, 32]")')
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: shape bug: [8, 64] vs [8, 32]" in result.stderr
    assert "clipforge pretrain: shape bug" not in result.stderr


def test_a_user_error_inside_training_is_one_line_exit_2(tmp_path):
    error = '__import__("clipforge.modeling.config", fromlist=["ConfigError"]).ConfigError("data.x: wrong, do y")'
    result = _pretrain_with_failing_loss(tmp_path, error)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "clipforge pretrain: data.x: wrong, do y"
