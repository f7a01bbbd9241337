"""Eval fixtures: a small real shard set (rendered scenes, 2 captions each, shape/colour labels in KEY.json)
and a seeded tiny open_clip model saved as model.pt and as an open_clip local-dir export."""
import csv
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
    unique_captions(captions)
    convert([str(captions)], str(root / "shards"), image_size=64, samples_per_shard=16, keep_cols=["shape", "color"],
            progress=False)
    (root / "shapes.txt").write_text("\n".join(SHAPES) + "\n")
    return root


def unique_captions(captions_csv) -> None:
    """Number every caption. 12 of the 80 rendered captions repeat (same shape, colour and place): identical
    texts score exactly alike, and which of the tied captions top-k returns first is not fixed (after an
    in-process convert it changed), so a recall@k compared for equality with a reference could differ by
    one hit. Numbered, every text is unique and the rankings have no exact ties."""
    with open(captions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["caption"] = f"{row['caption']} ({i})"
    with open(captions_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


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
