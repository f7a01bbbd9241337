"""`eval.ema` is refused up front (one ConfigError naming the keys) unless there is an EMA and a val set."""
import pytest

from clipforge.modeling.config import ConfigError, load_config

BASE = ["data.sources=[{path: synthetic}]", "train.steps=10"]


@pytest.mark.parametrize("extra", [["data.val_path=/v"], ["model.ema_decay=0.999"]])
def test_eval_ema_needs_an_ema_and_a_val_set(extra):
    with pytest.raises(ConfigError, match=r"eval.ema=true .* model.ema_decay .* data.val_path"):
        load_config(None, BASE + extra + ["eval.ema=true"])


def test_eval_ema_with_both_is_accepted():
    cfg = load_config(None, BASE + ["data.val_path=/v", "model.ema_decay=0.999", "eval.ema=true"])
    assert cfg.eval.ema is True and cfg.model.ema_decay == 0.999
