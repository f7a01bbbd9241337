"""ZeRO-3 gathers one parameter at a time wherever the process group is gloo: with train.device=auto on a machine
without a GPU too, not only with train.device=cpu. DeepSpeed 0.19.7's coalesced gather reads gloo's out-of-order
all_gathers half-written (tests/pretrain/test_zero3_gather_dist.py); NCCL keeps the coalesced one."""
import json

import pytest
import torch

from clipforge.modeling.config import load_config
from clipforge.modeling.model import build_model
from clipforge.pretrain import engine
from clipforge.pretrain.distributed import DistInfo


class ConfigWritten(Exception):
    """Raised in place of deepspeed.initialize: RUN/deepspeed.json is all these tests read."""


def _zero3(tiny_model_config, device: str):
    return load_config(None, [f"model.name={tiny_model_config}", "data.sources=[{path: x}]", "train.steps=1",
                              f"train.device={device}", "deepspeed.zero_stage=3", "deepspeed.precision=fp32"])


@pytest.fixture()
def gloo_world_of_one(tmp_path):
    """What init_distributed chooses on a CPU-only machine, without DeepSpeed's start-up."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                                         world_size=1)
    yield DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_zero3_on_gloo_gathers_sequentially_whatever_train_device_says(device, gloo_world_of_one, tiny_model_config,
                                                                      tmp_path, monkeypatch):
    cfg = _zero3(tiny_model_config, device)

    def initialize(*args):
        raise ConfigWritten

    monkeypatch.setattr(engine, "initialize", initialize)
    with pytest.raises(ConfigWritten):
        engine.build_engine(cfg, build_model(cfg.model, cfg.loss).model, gloo_world_of_one, 1, str(tmp_path / "run"))
    zero = json.loads((tmp_path / "run" / "deepspeed.json").read_text())["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_allgather_sequential"] is True


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_zero3_on_nccl_keeps_the_coalesced_gather(device, tiny_model_config):
    config = engine.deepspeed_config(_zero3(tiny_model_config, device), world_size=8, accum_steps=1, backend="nccl")
    assert "stage3_allgather_sequential" not in config["zero_optimization"]
