"""Convolutional image towers (open_clip's ModifiedResNet, a timm ConvNeXt) train under DeepSpeed bf16 and
are evaluated: DeepSpeed 0.19.7 casts parameters but not buffers, so a BatchNorm met fp32 running stats with
a bf16 input and the first step failed; the eval sized an empty rank's [0, d] tensors by `visual.output_dim`,
which timm towers lack."""
import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline.synthetic import make_synthetic_dataset
from clipforge.modeling.model import embed_dim

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TOWERS = {
    "resnet": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "timm-convnext": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                      "timm_proj": "linear", "image_size": 32},
    "vit": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
}


@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_embed_dim_is_the_width_of_encode_image(tower):
    model = open_clip.CLIP(embed_dim=24, vision_cfg=TOWERS[tower], text_cfg=TEXT)
    with torch.no_grad():
        width = model.encode_image(torch.zeros(2, 3, 32, 32)).shape[1]
    assert width == 24 and embed_dim(model) == 24


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(str(root / "raw"), num_train=32, num_val=8, size=32)
    for split in ("train", "val"):
        convert([str(root / "raw" / "captions.csv")], str(root / split), image_size=32, samples_per_shard=32,
                include_list=str(root / "raw" / "splits" / f"{split}.txt"), progress=False)
    return root


@pytest.mark.parametrize("tower", ["resnet", "timm-convnext"])
def test_conv_tower_trains_in_bf16_and_is_evaluated(tower, shards, tmp_path):
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"embed_dim": 24, "vision_cfg": TOWERS[tower], "text_cfg": TEXT}))
    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text("train: {device: cpu}\n")
    cmd = [sys.executable, "-m", "clipforge.pretrain", "--config", str(config), f"model.name={model}", f"data.sources=[{{path: {shards / 'train'}}}]",
           f"data.val_path={shards / 'val'}", "data.workers=0", "train.steps=2", "train.global_batch_size=8",
           "train.log_every=1", f"train.run_dir={run}", "deepspeed.zero_stage=2",
           "deepspeed.precision=bf16", "optim.warmup_steps=1", "checkpoint.every_steps=1000",
           "eval.every_steps=2", "eval.batch_size=8"]
    done = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] == r["loss"] for r in rows)
    assert "mean_recall@10" in json.loads((run / "eval" / "step00000002.json").read_text())["metrics"]
    assert (run / "export" / "open_clip_model.safetensors").is_file()


def _average_on_two_ranks(rank: int, world: int) -> None:
    from clipforge.pretrain.distributed import average_batchnorm_statistics
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm1d(2)).bfloat16()
    ranks = []
    for r in range(world):  # the same module on every rank, each with its own running statistics
        torch.manual_seed(100 + r)
        ranks.append([torch.rand(4).bfloat16(), torch.rand(4).bfloat16() + 1, torch.rand(2).bfloat16()])
    for bn_index, bn in ((0, net[1]), (2, net[2])):
        bn.running_mean.copy_(ranks[rank][bn_index])
    net[1].running_var.copy_(ranks[rank][1])
    weight = net[0].weight.detach().clone()
    average_batchnorm_statistics(net)
    expected_mean = (ranks[0][0].float() + ranks[1][0].float()) / 2
    expected_var = (ranks[0][1].float() + ranks[1][1].float()) / 2
    assert net[1].running_mean.dtype == torch.bfloat16
    assert torch.equal(net[1].running_mean, expected_mean.bfloat16())
    assert torch.equal(net[1].running_var, expected_var.bfloat16())
    assert torch.equal(net[2].running_mean, ((ranks[0][2].float() + ranks[1][2].float()) / 2).bfloat16())
    assert torch.equal(net[0].weight, weight)  # parameters are not touched


@pytest.mark.multiprocess
def test_batchnorm_statistics_are_averaged_over_ranks_in_their_dtype():
    from tests.pretrain.test_gather_dist import spawn_gloo
    spawn_gloo(_average_on_two_ranks, 2)
