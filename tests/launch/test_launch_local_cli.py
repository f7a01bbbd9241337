"""`clipforge launch local`: the exact torchrun command (--dry-run), config validation before any process, env."""
import itertools
import os
import re
import shlex
import sys

from clipforge.launch.commands import run_forwarding_signals
from clipforge.launch.torchrun import FORWARDED_SIGNALS, local_env, run_id_for

from .launch_helpers import clipforge, write_config


def test_dry_run_prints_the_standalone_torchrun_command(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), str(tmp_path / "shards"))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = clipforge("launch", "local", "--config", str(cfg), "--nproc", "2", "--dry-run", "optim.lr=2e-3",
                       "--python", "/opt/py/bin/python", env=env)
    assert result.returncode == 0, result.stderr
    words = shlex.split(result.stdout)
    assigned = list(itertools.takewhile(lambda w: re.match(r"^[A-Z_]+=", w), words))   # env first, copy-pastable
    assert f"OMP_NUM_THREADS={max(1, os.cpu_count() // 2)}" in assigned   # the cores split over 2 ranks
    assert words[len(assigned):] == [
        "/opt/py/bin/python", "-m", "clipforge.pretrain.torchrun", "--nproc-per-node=2",
        f"--signals-to-handle={FORWARDED_SIGNALS}", "--shutdown-timeout=30", "--standalone",
        "-m", "clipforge.pretrain", "--config", str(cfg), "optim.lr=2e-3"]
    assert not (tmp_path / "run").exists()   # a dry run writes nothing


def test_multinode_joins_a_c10d_rendezvous_with_an_id_both_nodes_derive(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), str(tmp_path / "shards"))
    commands = []
    for rank in ("0", "1"):
        result = clipforge("launch", "local", "--config", str(cfg), "--nnodes", "2", "--node-rank", rank,
                           "--rdzv-endpoint", "127.0.0.1:29555", "--dry-run")
        assert result.returncode == 0, result.stderr
        commands.append(shlex.split(result.stdout))
    for rank, argv in enumerate(commands):
        assert "--nnodes=2" in argv and f"--node-rank={rank}" in argv and "--rdzv-backend=c10d" in argv
        assert "--rdzv-endpoint=127.0.0.1:29555" in argv and "--standalone" not in argv
    ids = {a for argv in commands for a in argv if a.startswith("--rdzv-id=")}
    assert ids == {f"--rdzv-id={run_id_for(str(tmp_path / 'run'))}"}


def test_static_rendezvous_uses_master_address_and_node_rank(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), str(tmp_path / "shards"))
    result = clipforge("launch", "local", "--config", str(cfg), "--nnodes", "2", "--node-rank", "1",
                       "--rdzv-endpoint", "10.1.2.3:29500", "--rdzv-backend", "static", "--dry-run")
    argv = shlex.split(result.stdout)
    assert "--rdzv-backend=static" in argv and "--master-addr=10.1.2.3" in argv and "--master-port=29500" in argv


def _error(result):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("clipforge launch: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_bad_config_is_refused_in_one_line_before_anything_runs(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), str(tmp_path / "shards"))
    assert "deepspeed.zero_stage=7" in _error(clipforge("launch", "local", "--config", str(cfg),
                                                         "deepspeed.zero_stage=7"))
    assert "not found" in _error(clipforge("launch", "local", "--config", str(tmp_path / "missing.yaml")))
    # 8 samples cannot be split over 3 ranks: refused here, not after 3 processes started
    assert "world size 3" in _error(clipforge("launch", "local", "--config", str(cfg), "--nproc", "3"))
    assert not (tmp_path / "run").exists()


def test_bad_rendezvous_flags_name_the_flag(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), str(tmp_path / "shards"))
    assert "--rdzv-endpoint" in _error(clipforge("launch", "local", "--config", str(cfg), "--nnodes", "2"))
    assert "--node-rank 2" in _error(clipforge("launch", "local", "--config", str(cfg), "--nnodes", "2",
                                               "--node-rank", "2", "--rdzv-endpoint", "h:1"))
    assert "HOST:PORT" in _error(clipforge("launch", "local", "--config", str(cfg), "--nnodes", "2",
                                           "--rdzv-endpoint", "nohost"))


def test_env_splits_cores_over_ranks_and_keeps_what_the_user_set():
    env = local_env({"PATH": "/bin"}, nproc=4, device="cpu", cpu_count=16)
    assert env["OMP_NUM_THREADS"] == "4" and env["DS_ACCELERATOR"] == "cpu" and env["PATH"] == "/bin"
    assert local_env({"OMP_NUM_THREADS": "7"}, nproc=4, device="cuda", cpu_count=16)["OMP_NUM_THREADS"] == "7"
    assert "DS_ACCELERATOR" not in local_env({}, nproc=2, device="cuda", cpu_count=2)
    assert local_env({}, nproc=8, device="cpu", cpu_count=2)["OMP_NUM_THREADS"] == "1"


def test_exit_code_and_signals_are_forwarded_to_the_child(tmp_path):
    assert run_forwarding_signals([sys.executable, "-c", "import sys; sys.exit(3)"], {}) == 3
    # SIGTERM to the launcher reaches the child (which reports it), and a signal death reads as 128 + N
    probe = ("import os, signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
             "os.kill(os.getppid(), signal.SIGTERM)\n"
             "time.sleep(30)")
    assert run_forwarding_signals([sys.executable, "-c", probe], {}) == 75
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert run_forwarding_signals([sys.executable, "-c", killed], {}) == 128 + 9


def test_launch_help_and_unknown_mode():
    assert clipforge("launch", "--help").returncode == 0
    result = clipforge("launch", "locl")
    assert result.returncode == 2 and "unknown mode 'locl'" in result.stderr
