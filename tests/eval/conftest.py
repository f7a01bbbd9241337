"""Eval fixtures: a small real shard set (rendered scenes, 2 captions each, shape/colour labels in KEY.json)
and a seeded tiny open_clip model saved as model.pt and as an open_clip local-dir export."""
import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipforge.data_pipeline.convert.api import convert
from clipforge.data_pipeline.synthetic import SHAPES, make_synthetic_dataset


@pytest.fixture(scope="session")
def eval_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    captions = make_synthetic_dataset(str(root / "raw"), num_train=0, num_val=40, size=64, seed=3)
    convert([str(captions)], str(root / "shards"), image_size=64, samples_per_shard=16, keep_cols=["shape", "color"],
            progress=False)
    (root / "shapes.txt").write_text("\n".join(SHAPES) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_model_config):
    """(run-like dir with model.pt and export/, the open_clip model itself)."""
    root = tmp_path_factory.mktemp("tinymodel")
    open_clip.add_model_config(str(tiny_model_config))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-vit").eval()
    torch.save(model.state_dict(), root / "model.pt")
    (root / "export").mkdir()
    cfg = json.loads(tiny_model_config.read_text())
    pp = {k: v for k, v in model.visual.preprocess_cfg.items() if k in ("size", "mean", "std", "interpolation",
                                                                      "resize_mode")}
    (root / "export" / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pp}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(root / "export" / "open_clip_model.safetensors"))
    return root, model
