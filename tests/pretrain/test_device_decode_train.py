"""data.decode=gpu in the trainer: refused with one line where the ranks would train on the CPU (before anything is
spawned: `launch local`; before the process group and DeepSpeed: `pretrain`), and a real 2-rank training
(tests/pretrain/device_decode_worker.py) whose train loop gets, step by step, the batches data.decode=cpu gives it:
the same keys, pixels within the CPU-vs-device tolerance (tests/data_pipeline/test_stream_device_decode.py: 1 grey
level without DCT-domain scaling), losses within 1e-4 at the first step.

`pretrain.run.run` itself decodes on whatever device the rank trains on: the documented way to run the device path on
CPU (train.device=auto on a machine without CUDA), which the 2-rank run uses; the CLI and `launch` refuse it.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipforge.modeling.config import ConfigError, load_config
from clipforge.modeling.config_checks import check_decode_device
from clipforge.pretrain.rundir import check_resume
from tests.data_pipeline.photos import photo_jpeg, write_shards

from ..heavy_imports import run_entry
from ..launch.launch_helpers import write_config
from .test_trainer_dist import ENV, HERE, REPO, losses

WORKER = HERE / "device_decode_worker.py"
NO_CUDA = "data.decode=gpu decodes the train images on the rank's CUDA device, and "
FIX = "; run on a GPU node, or set data.decode=cpu (the loader workers decode them)\n"


def test_decode_gpu_with_train_device_cpu_is_refused_by_the_config():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.sources=[{path: x}]", "train.steps=1", "data.decode=gpu", "train.device=cpu"])
    assert str(err.value) + "\n" == NO_CUDA + "train.device=cpu" + FIX
    cfg = load_config(None, ["data.sources=[{path: x}]", "train.steps=1", "data.decode=gpu", "train.device=auto"])
    check_decode_device(cfg, cuda_found=True)
    with pytest.raises(ConfigError, match="train.device=auto finds no CUDA device here"):
        check_decode_device(cfg, cuda_found=False)


@pytest.fixture
def gpu_decode_config(tmp_path) -> Path:
    shards = write_shards(tmp_path / "shards", [(f"k{i}", photo_jpeg(i, 64, 80), "jpg") for i in range(8)])
    return write_config(tmp_path / "c.yaml", str(tmp_path / "run"), shards, train={"device": "auto"},
                        data={"decode": "gpu"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, train.device=auto is a GPU run")
@pytest.mark.parametrize("command", [("launch", "local", "--dry-run"), ("pretrain",)])
def test_a_cpu_only_node_refuses_decode_gpu_in_one_line_before_deepspeed(gpu_decode_config, tmp_path, command):
    env = dict(ENV, CUDA_VISIBLE_DEVICES="")  # launch counts GPUs without torch, pretrain asks torch
    result, heavy = run_entry("clipforge.launch.cli", [*command, "--config", str(gpu_decode_config)], env=env)
    prefix = "clipforge launch: error: " if command[0] == "launch" else "clipforge pretrain: "
    assert (result.returncode, result.stderr) == (2, prefix + NO_CUDA + "train.device=auto finds no CUDA device here"
                                                  + FIX), result.stderr
    assert "deepspeed" not in heavy and (command[0] == "pretrain" or not heavy)
    assert not (tmp_path / "run").exists()  # nothing was started or written


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """decode=cpu and decode=gpu, 3 steps each on 2 ranks: exit codes, {decode: [rank 0's record, rank 1's]}, the
    losses, and the resume point of the cpu run resumed with decode=gpu."""
    out = tmp_path_factory.mktemp("device-decode-train")
    write_shards(out / "shards", [(f"k{i:03d}", photo_jpeg(i, 64, 80), "jpg") for i in range(24)])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    (out / "worker.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    records = {d: [dict(np.load(out / f"{d}.rank{r}.npz")) for r in range(2)] for d in ("cpu", "gpu")}
    # the decode=cpu run, resumed with decode=gpu: a safe change (the same samples and crops)
    resumed = check_resume(load_config(str(out / "cpu" / "config.yaml"), ["data.decode=gpu", "train.steps=4"]), 2)
    result = json.loads((out / "codes.json").read_text()), records, {d: losses(out / d) for d in ("cpu", "gpu")}, \
        resumed
    for decode in ("cpu", "gpu"):  # ~87 MB of checkpoint (weights + Adam) each: not left on CI's small disk
        shutil.rmtree(out / decode / "checkpoints", ignore_errors=True)
    return result


@pytest.mark.multiprocess
def test_each_rank_trains_on_the_batches_decode_cpu_gives_it(two_runs):
    codes, records, _, _ = two_runs
    assert codes == {"cpu": 0, "gpu": 0}
    for cpu, gpu in zip(records["cpu"], records["gpu"]):
        assert gpu["device"] == "cpu" and gpu["images"].shape == cpu["images"].shape == (3, 4, 3, 64, 64)
        assert (gpu["keys"] == cpu["keys"]).all()
        assert np.abs(gpu["images"].astype(int) - cpu["images"].astype(int)).max() <= 1
    halves = [k for r in range(2) for k in records["gpu"][r]["keys"].ravel()]
    assert len(set(halves)) == 24  # the ranks' halves of 3 global batches: every sample once


@pytest.mark.multiprocess
def test_the_losses_agree_within_the_pixel_tolerance(two_runs):
    # Measured: 3e-5 apart at step 1 (same weights; pixels 1 grey level apart at some places), up to 9e-4 at steps
    # 2-3 (the first optimizer steps have moved the weights apart by then).
    _, _, loss, _ = two_runs
    assert len(loss["cpu"]) == len(loss["gpu"]) == 3
    assert abs(loss["gpu"][0] - loss["cpu"][0]) < 1e-4, loss
    assert np.allclose(loss["gpu"], loss["cpu"], rtol=0, atol=2e-3), loss


@pytest.mark.multiprocess
def test_a_run_resumes_with_the_other_decode(two_runs):
    *_, resumed = two_runs
    assert resumed.step == 3 and sorted(resumed.changes) == ["data.decode 'cpu' -> 'gpu'", "train.steps 3 -> 4"]
