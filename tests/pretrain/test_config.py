"""Run-config loading: recipes validate, overrides apply, every error is one line naming the key."""
import json
from pathlib import Path

import pytest

from clipforge.modeling.config import ConfigError, check_batch_split, load_config, save_config

from tests.conftest import CONFIGS

RECIPES = ["demo-cpu.yaml", "vit-b-32-1node.yaml", "vit-l-14-multinode-zero2.yaml"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_bundled_recipes_load_and_validate(recipe):
    cfg = load_config(str(CONFIGS / recipe))
    assert cfg.data.sources and cfg.train.global_batch_size > 0


def test_dotted_overrides_apply_with_types():
    cfg = load_config(str(CONFIGS / "demo-cpu.yaml"),
                      ["optim.lr=1e-4", "deepspeed.zero_stage=3", "data.sources=[{path: /x, weight: 2}]"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.deepspeed.zero_stage == 3
    assert cfg.data.sources[0].path == "/x" and cfg.data.sources[0].weight == 2.0


@pytest.mark.parametrize("overrides, expected", [
    (["optim.lrr=1"], "optim.lrr"),                       # unknown key, with a suggestion
    (["optim.lr=abc"], "optim.lr"),                       # wrong type
    (["deepspeed.zero_stage=5"], "allowed values are 0, 1, 2, 3"),
    (["deepspeed.precision=fp8"], "deepspeed.precision"),
    (["loss.local_loss=true", "loss.gather_with_grad=false"], "loss.gather_with_grad"),
    (["train.steps=10", "train.epochs=2"], "exactly one of train.steps"),
    (["data.sources=[]"], "data.sources is empty"),
    (["data.mode=stream"], "data.mode"),
    (["optim.lr"], "dotted.key=value"),
    (["model.hf_text_dir=/does/not/exist"], "model.hf_text_dir"),
    (["data.captions_per_sample=0"], "data.captions_per_sample"),
    (["data.captions_per_sample=5", "loss.impl=tiled"], "needs the global naive loss"),
    (["data.captions_per_sample=5", "loss.local_loss=true"], "needs the global naive loss"),
])
def test_invalid_configs_give_one_line_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(str(CONFIGS / "demo-cpu.yaml"), overrides)
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_a_yaml_file_that_is_not_a_mapping_is_one_line(tmp_path):
    """Valid YAML, but a list: named as such (only PyYAML's own errors read "not valid YAML")."""
    listed = tmp_path / "list.yaml"
    listed.write_text("- model\n- data\n")
    with pytest.raises(ConfigError, match="expected a mapping of config sections") as err:
        load_config(str(listed))
    assert "\n" not in str(err.value)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(str(CONFIGS / "vit-l-14-multinode-zero2.yaml"), ["optim.lr=3e-4"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    assert load_config(str(tmp_path / "config.yaml")) == cfg


def test_batch_split_counts_micro_batches_and_refuses_remainders():
    cfg = load_config(str(CONFIGS / "demo-cpu.yaml"), ["train.global_batch_size=128", "train.micro_batch_size=16"])
    assert check_batch_split(cfg, world_size=2) == 4
    with pytest.raises(ConfigError, match="not a multiple"):
        check_batch_split(load_config(str(CONFIGS / "demo-cpu.yaml"), ["train.global_batch_size=100"]), world_size=3)


def test_the_gpu_recipe_combines_the_2025_recipe_pieces(tmp_path):
    """configs/vit-b-16-clipa-distill.yaml (#16): CLIPA stages, distillation from stored embeddings, layer decay,
    EMA, compile, ZeRO-2 -- it validates (the teacher, a path on the user's cluster, is given here), and its
    stages resolve against open_clip's own ViT-B-16 config as the preflight does before anything starts."""
    import open_clip

    from clipforge.modeling.stages import resolve_stages
    from clipforge.pretrain.preflight import check_stages

    cfg = load_config(str(CONFIGS / "vit-b-16-clipa-distill.yaml"), [f"loss.distill.teacher={tmp_path}"])
    assert cfg.model.name == "ViT-B-16" and cfg.deepspeed.zero_stage == 2 and cfg.deepspeed.precision == "bf16"
    assert cfg.loss.distill.stored and cfg.loss.distill.teacher == str(tmp_path)
    assert cfg.optim.layer_decay_image and cfg.optim.layer_decay_text and cfg.model.ema_decay
    assert cfg.train.compile and cfg.data.decode == "gpu"
    check_stages(cfg)
    model_cfg = json.loads((Path(open_clip.__file__).parent / "model_configs" / "ViT-B-16.json").read_text())
    stages = resolve_stages(cfg.train.stages, model_cfg, cfg.model)
    assert [(s.start, s.end, s.image_size, s.context_length) for s in stages] == [
        (0, 54000, 112, 32), (54000, 60000, 224, 77)]
    assert stages[-1].end == cfg.train.steps
    with pytest.raises(ConfigError, match="loss.distill.teacher"):   # no teacher here: refused before anything runs
        load_config(str(CONFIGS / "vit-b-16-clipa-distill.yaml"))
