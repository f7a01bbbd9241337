"""modeling/config_checks.py: the ranges of the layer-wise lr decay and the per-tower weight decays, refused at load
time in one line naming the key."""
import pytest

from clipforge.modeling.config import ConfigError, load_config


def load(*overrides):
    return load_config(None, ["data.sources=[{path: x}]", "train.steps=1", *overrides])


@pytest.mark.parametrize("key", ["layer_decay", "layer_decay_image", "layer_decay_text"])
@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_layer_decay_outside_0_1_is_refused(key, value):
    with pytest.raises(ConfigError, match=rf"^optim\.{key}={value}: must be in \(0, 1\]"):
        load(f"optim.{key}={value}")


@pytest.mark.parametrize("key", ["weight_decay", "weight_decay_image", "weight_decay_text"])
def test_negative_weight_decay_is_refused(key):
    with pytest.raises(ConfigError, match=rf"^optim\.{key}=-0.1: must be >= 0"):
        load(f"optim.{key}=-0.1")


def test_the_bounds_and_the_defaults_load():
    cfg = load("optim.layer_decay=1.0", "optim.layer_decay_image=0.65", "optim.weight_decay_text=0")
    assert (cfg.optim.layer_decay, cfg.optim.layer_decay_image, cfg.optim.weight_decay_text) == (1.0, 0.65, 0.0)
    optim = load().optim
    assert (optim.layer_decay, optim.layer_decay_image, optim.layer_decay_text) == (None, None, None)
    assert (optim.weight_decay_image, optim.weight_decay_text) == (None, None)
