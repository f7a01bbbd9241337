"""train.stages (progressive resolution) in one process: the schedule, its refusals before anything starts, and
the model running an earlier stage's size on the last stage's parameters exactly as open_clip would at that size
(the positional embedding open_clip's interpolation of the parameter, the first L text positions)."""
import copy
import json

import open_clip
import pytest
import torch

from clipforge.modeling.config import ConfigError, load_config
from clipforge.modeling.model import build_model, final_model_config, instantiate
from clipforge.modeling.stages import Stage, resolve_stages, stage_at
from clipforge.pretrain.preflight import preflight
from clipforge.pretrain.rundir import check_resume
from clipforge.pretrain.stages import resized_pos_embed, run_at_any_size

from .test_rundir import _run_dir

TWO_STAGES = ("train.stages=[{steps: 3, image_size: 32, context_length: 16, patch_dropout: 0.5}, "
              "{steps: 3, image_size: 48}]")


def staged(model, *overrides):
    return load_config(None, [f"model.name={model}", "data.sources=[{path: x}]", "train.steps=6", *overrides])


def test_missing_keys_are_the_runs_and_each_step_has_its_stage(tiny_model_config):
    cfg = staged(tiny_model_config, "model.patch_dropout=0.25",
                 "train.stages=[{steps: 3, image_size: 32, context_length: 16, patch_dropout: 0.5}, {steps: 3}]")
    model_cfg = json.loads(tiny_model_config.read_text())
    stages = resolve_stages(cfg.train.stages, model_cfg, cfg.model)
    assert stages == [Stage(0, 0, 3, 32, 16, 0.5), Stage(1, 3, 6, 64, 32, 0.25)]  # tiny-vit: 64 px, 32 tokens
    assert [stage_at(stages, done).index for done in range(7)] == [0, 0, 0, 1, 1, 1, 1]


def test_the_model_is_the_last_stages_and_one_stage_is_the_plain_run(tiny_model_config):
    cfg = staged(tiny_model_config, TWO_STAGES)
    built = final_model_config(cfg.model, cfg.loss, cfg.train.stages)
    assert built["vision_cfg"]["image_size"] == 48 and built["text_cfg"]["context_length"] == 32
    assert "patch_dropout" not in built["vision_cfg"]  # the export's config: the last stage drops no patches
    last_drops = staged(tiny_model_config, "train.stages=[{steps: 6, patch_dropout: 0.5}]")
    assert final_model_config(last_drops.model, last_drops.loss, last_drops.train.stages)["vision_cfg"][
        "patch_dropout"] == 0.5
    one = staged(tiny_model_config, "train.stages=[{steps: 6}]")
    assert final_model_config(one.model, one.loss, one.train.stages) == final_model_config(one.model, one.loss)


@pytest.mark.parametrize("overrides, expected", [
    (["train.steps=5"], "train.stages' steps add up to 6, but train.steps=5: train.steps is the whole run"),
    (["train.steps=null", "train.samples=48"], "but the run length is given as train.samples"),
    (["train.stages=[{steps: 0}, {steps: 6}]"], "train.stages[0].steps=0: every stage needs steps >= 1"),
    (["train.stages=[{steps: 6, image_size: 0}]"], "train.stages[0].image_size=0: must be >= 1"),
    (["train.stages=[{steps: 6, context_length: 1}]"], "train.stages[0].context_length=1: must be >= 2"),
    (["train.stages=[{steps: 6, patch_dropout: 1.0}]"], "train.stages[0].patch_dropout=1.0: must be in [0, 1)"),
    (["train.stages=[{steps: 6, context_length: 16}]", "model.hf_text_dir=.", "model.lock_text=true"],
     "model.text_cache stores the locked text tower's outputs at one context length"),
])
def test_impossible_stages_are_refused_at_load_in_one_line(tiny_model_config, overrides, expected):
    with pytest.raises(ConfigError) as err:
        staged(tiny_model_config, TWO_STAGES, *overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("model, stages, expected", [
    ("tiny", "[{steps: 3, image_size: 40}, {steps: 3}]", "image_size=40: not a multiple of"),
    ("ViT-B-32", "[{steps: 3, image_size: 112}, {steps: 3}]", "ViT-B-32's patch size 32"),
    ("tiny", "[{steps: 3}, {steps: 3, context_length: 16}]", "train.stages[0].context_length=32: longer than the "
                                                              "last stage's 16"),
    ("resnet", "[{steps: 3, image_size: 32}, {steps: 3}]", "needs open_clip's ViT image tower"),
])
def test_what_the_model_cannot_run_is_refused_by_the_preflight(tmp_path, tiny_model_config, model, stages, expected):
    (tmp_path / "manifest.json").write_text("{}")
    name = {"tiny": tiny_model_config, "resnet": tiny_model_config.parent / "flickr8k-rn.json"}.get(model, model)
    cfg = load_config(None, [f"model.name={name}", f"data.sources=[{{path: '{tmp_path}'}}]", "train.steps=6",
                             f"train.stages={stages}"])
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def staged_model(tiny_model_config):
    """The tiny model of TWO_STAGES (built at 48 px: a 3 x 3 grid), made to run both stages."""
    cfg = staged(tiny_model_config, TWO_STAGES)
    torch.manual_seed(0)
    bundle = build_model(cfg.model, cfg.loss, cfg.train.stages)
    run_at_any_size(bundle.clip, resolve_stages(cfg.train.stages, json.loads(tiny_model_config.read_text()),
                                                cfg.model))
    return bundle


def _open_clip_at(bundle, image_size=None, context_length=None, **replaced):
    """A plain open_clip model of that size holding the staged model's weights (`replaced`: resized tensors)."""
    cfg = copy.deepcopy(bundle.model_cfg)
    cfg["vision_cfg"]["image_size"] = image_size or cfg["vision_cfg"]["image_size"]
    cfg["text_cfg"]["context_length"] = context_length or cfg["text_cfg"]["context_length"]
    model = instantiate(cfg).eval()
    model.load_state_dict(dict(bundle.clip.state_dict(), **replaced))
    return model


@torch.no_grad()
def test_an_earlier_stage_sees_open_clips_interpolation_of_the_positional_embedding(staged_model):
    clip = staged_model.clip.eval()
    state = clip.state_dict()
    small = instantiate(dict(staged_model.model_cfg, vision_cfg=dict(staged_model.model_cfg["vision_cfg"],
                                                                     image_size=32)))
    open_clip.model.resize_pos_embed(state, small)  # what open_clip does loading these weights at 32 px
    resized = resized_pos_embed(clip.visual.positional_embedding, (3, 3), (2, 2))
    assert resized.shape == (5, 128) and torch.equal(resized, state["visual.positional_embedding"])
    images = torch.randn(2, 3, 32, 32)
    at_32 = _open_clip_at(staged_model, 32, **{"visual.positional_embedding": resized})
    assert torch.equal(clip.encode_image(images), at_32.encode_image(images))
    # At the last stage's own size the parameter itself: exactly the plain open_clip model (what is exported).
    images = torch.randn(2, 3, 48, 48)
    assert torch.equal(clip.encode_image(images), _open_clip_at(staged_model).encode_image(images))


@torch.no_grad()
def test_a_shorter_context_reads_the_first_positions(staged_model):
    clip = staged_model.clip.eval()
    captions = ["a red square on a blue circle beside a green triangle under a yellow star"]
    short = open_clip.tokenizer.SimpleTokenizer(context_length=16)(captions)
    assert short.shape == (1, 16) and short[0, -1] == 49407  # truncated, still ending in end-of-text
    first = clip.positional_embedding[:16]
    assert torch.equal(clip.encode_text(short),
                       _open_clip_at(staged_model, context_length=16, positional_embedding=first).encode_text(short))
    full = staged_model.tokenizer(captions)
    assert torch.equal(clip.encode_text(full), _open_clip_at(staged_model).encode_text(full))


def test_a_low_resolution_stage_trains_the_full_size_parameter(staged_model):
    clip = staged_model.clip.train()
    clip.zero_grad()
    clip.encode_image(torch.randn(2, 3, 32, 32)).square().sum().backward()
    grad = clip.visual.positional_embedding.grad
    assert grad.shape == (10, 128) and bool((grad.abs().sum(dim=1) > 0).all())  # every position of the 3 x 3 grid


def test_a_resume_keeps_the_stages_it_was_started_with(tmp_path):
    # The model's shapes are the last stage's: other stages are another run (the same ones resume).
    stages = "train.stages=[{steps: 2, image_size: 32}, {steps: 3}]"
    config = _run_dir(tmp_path, step=2, overrides=[stages])
    assert check_resume(load_config(str(config), [stages]), world_size=2).step == 2
    with pytest.raises(ConfigError, match="cannot resume .* with a changed train.stages"):
        check_resume(load_config(str(config), ["train.stages=[{steps: 2, image_size: 48}, {steps: 3}]"]), world_size=2)
