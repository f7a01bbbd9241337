"""Two separate `clipforge launch local --nnodes 2` invocations on 127.0.0.1 (c10d rendezvous) train
exactly like one node with 2 processes: the same losses, step for step."""
import os
import subprocess
import sys

import pytest

from .launch_helpers import REPO, losses

pytestmark = [pytest.mark.multiprocess]


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_local_invocations_with_nnodes_2_equal_one_node(tiny_run_config, reference_losses, tmp_path):
    run_dir = tmp_path / "run"
    endpoint = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    nodes = [subprocess.Popen([sys.executable, "-m", "clipforge.launch.cli", "launch", "local", "--config", str(tiny_run_config),
                               "--nproc", "1", "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", endpoint,
                               f"train.run_dir={run_dir}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert losses(run_dir) == reference_losses
