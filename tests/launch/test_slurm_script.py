"""`clipforge launch slurm --dry-run`: golden scripts, quoting of hostile values, no torch on login nodes.

Golden files: tests/launch/golden/*.sbatch (the tmp dir reads /TMP). Regenerate after an intended
change with CLIPFORGE_UPDATE_GOLDEN=1 and review the diff.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .launch_helpers import REPO, clipforge, marker_dataset, write_config

GOLDEN = Path(__file__).parent / "golden"
HOSTILE = "/TMP/run $(touch /TMP/pwned) `id` 'q' \"dq\" ; rm -rf ~ #x"


def _dry_run(tmp_path, *args, run_dir=None):
    (tmp_path / "work").mkdir(exist_ok=True)
    cfg = write_config(tmp_path / "c.yaml", run_dir or str(tmp_path / "run"), "shards/train")
    result = clipforge("launch", "slurm", "--config", str(cfg), "--python", "/opt/venv/bin/python",
                       "--dry-run", *args, cwd=tmp_path / "work")
    assert result.returncode == 0, result.stderr
    return result.stdout.replace(str(tmp_path), "/TMP")


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("CLIPFORGE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"dry-run output differs from {path} (CLIPFORGE_UPDATE_GOLDEN=1 to accept)"


def test_golden_two_nodes_torchrun(tmp_path):
    text = _dry_run(tmp_path, "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu", "--account", "proj",
                    "--time", "48:00:00", "--qos", "high", "--constraint", "a100", "--exclusive", "--mem", "0",
                    "--cpus-per-task", "64", "--env", "NCCL_SOCKET_IFNAME=ib0", "train.steps=10", "train.device=cuda",
                    "train.global_batch_size=256")
    _golden("pretrain-torchrun.sbatch", text)


def test_golden_one_task_per_rank_srun(tmp_path):
    _golden("pretrain-srun.sbatch", _dry_run(tmp_path, "--nodes", "2", "--gpus-per-node", "4", "--launcher", "srun",
                                             "--time", "30", "--signal-seconds", "120",
                                             "train.global_batch_size=256", "train.device=cuda"))


def test_golden_convert_array_and_eval(tmp_path):
    (tmp_path / "work").mkdir()
    convert = clipforge("launch", "slurm", "convert", "--parts", "2", "--out", "shards", "--python", "/opt/py",
                        "--dry-run", "--", "captions.csv", "--image-size", "64", cwd=tmp_path / "work")
    evaluate = clipforge("launch", "slurm", "eval", "--job-dir", "ev", "--gpus-per-node", "2", "--python", "/opt/py",
                         "--dry-run", "--", "--model", "run", "--data", "val", "--task", "retrieval",
                         cwd=tmp_path / "work")
    assert convert.returncode == 0 and evaluate.returncode == 0, convert.stderr + evaluate.stderr
    _golden("convert-eval.sbatch", (convert.stdout + evaluate.stdout).replace(str(tmp_path), "/TMP"))


def _srun_words(script: str):
    """The words bash passes to srun (the continued srun line, `"${resume[@]}"` empty)."""
    line = re.search(r"^srun .*?&$", script, re.S | re.M).group(0)
    return shlex.split(line.replace("\\\n", " ").rstrip("&").replace('"${resume[@]}"', ""))


def test_hostile_values_stay_literal(tmp_path):
    hostile_override = "data.sources=[{path: '" + HOSTILE.replace("'", "") + "'}]"
    text = _dry_run(tmp_path, "--nodes", "2", "--partition", "a b$(id)", hostile_override,
                    run_dir=HOSTILE.replace("/TMP", str(tmp_path)))
    assert _srun_words(text)[-1] == hostile_override      # one word, byte for byte
    assert "#SBATCH --partition='a b$(id)'" in text
    # bash parses the whole script, and its own run_dir= line evaluates to the literal path
    script = tmp_path / "s.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assignment = re.search(r"^run_dir=.*$", text, re.M).group(0)
    probe = subprocess.run(["bash", "-c", assignment + "\nprintf '%s' \"$run_dir\""], capture_output=True, text=True)
    assert probe.stdout == HOSTILE and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("args", [
    ["train.run_dir=/tmp/a\nb"],                     # a config value with a newline
    ["--partition", "gpu\n#SBATCH --uid=0"],          # a flag value that would add an #SBATCH line
    ["--env", "X=1\nrm -rf /"],
])
def test_values_with_a_newline_are_refused(tmp_path, args):
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), "shards")
    result = clipforge("launch", "slurm", "--config", str(cfg), "--dry-run", *args)
    assert result.returncode == 2 and "newline" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_bad_slurm_flags_are_one_line_errors(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), "shards")
    for args, needle in ((["--time", "2 days"], "--time"), (["--env", "1X=2"], "--env"),
                         (["--nodes", "0"], "--nodes"), (["--nodes", "3"], "world size 3")):
        result = clipforge("launch", "slurm", "--config", str(cfg), "--dry-run", *args)
        assert result.returncode == 2 and needle in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_launch_imports_no_torch_or_deepspeed(tmp_path):
    """What a login node without torch runs: validate + render + print; torch never enters sys.modules."""
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), "shards")
    code = f"""
import sys, contextlib, io
for name in ("torch", "deepspeed", "open_clip"):   # as on a login node without them: importing raises
    sys.modules[name] = None
from clipforge.launch.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["launch", "slurm", "--config", {str(cfg)!r}, "--nodes", "2", "--dry-run"]) == 0
    assert main(["launch", "local", "--config", {str(cfg)!r}, "--nproc", "2", "--dry-run"]) == 0
    assert main(["launch", "slurm", "convert", "--parts", "2", "--out", "o", "--dry-run", "--", "in.csv"]) == 0
    assert main(["launch", "slurm", "eval", "--job-dir", "j", "--dry-run", "--", "--model", "m"]) == 0
heavy = sorted(m for m, mod in sys.modules.items() if mod is not None
               and m.split(".")[0] in ("torch", "deepspeed", "open_clip", "numpy", "PIL"))
print(heavy)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_sbatch_the_error_says_where_to_run_and_the_script_is_kept(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), marker_dataset(tmp_path / "shards"))
    result = clipforge("launch", "slurm", "--config", str(cfg), env=dict(os.environ, PATH=str(tmp_path / "empty")))
    assert result.returncode == 2 and "sbatch not found" in result.stderr and result.stderr.count("\n") == 1
    script = tmp_path / "run" / "slurm" / "pretrain.sbatch"
    assert script.is_file() and os.access(script, os.X_OK)
    assert (tmp_path / "run" / "slurm" / "submitted-config.yaml").read_text() == cfg.read_text()
