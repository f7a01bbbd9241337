"""A CPU rank's start-up prints nothing of DeepSpeed's or torch's noise, and DeepSpeed's later warnings still
reach stdout (its log handler is not left pointing at the swallowed buffer)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging
from clipforge.pretrain.distributed import init_distributed
init_distributed("cpu")
logging.getLogger("DeepSpeed").warning("a later DeepSpeed warning")
import warnings  # what torch says each time DeepSpeed's ZeRO calls a renamed collective: silenced too
warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use ...", FutureWarning)
warnings.warn("an unrelated FutureWarning of the user's", FutureWarning)
"""


def test_cpu_rank_start_up_is_quiet_but_later_warnings_show():
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    for noise in ("CUDA_HOME", "built successfully", "all_gather_into_tensor"):
        assert noise not in output, output
    assert "an unrelated FutureWarning of the user's" in proc.stderr  # only DeepSpeed's noise is filtered
    assert "a later DeepSpeed warning" in proc.stdout
