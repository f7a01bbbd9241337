"""loss.distill's impossible combinations are refused by load_config (torch-free, before any process starts) with
one line naming the keys and the fix."""
import pytest

from clipforge.modeling.config import ConfigError, load_config


@pytest.fixture
def base(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    return ["data.sources=[{path: shards}]", "train.steps=1", f"loss.distill.teacher=local-dir:{teacher}"]


def test_a_valid_distillation_config_loads(base):
    cfg = load_config(None, base + ["loss.distill.stored=true", "loss.distill.temperature=0.05"])
    assert (cfg.loss.distill.weight, cfg.loss.distill.temperature, cfg.loss.distill.stored) == (0.5, 0.05, True)


@pytest.mark.parametrize("overrides,message", [
    (["loss.distill.teacher=local-dir:/no/such/dir"], "loss.distill.teacher='local-dir:/no/such/dir': no such model"),
    (["loss.distill.weight=0"], "loss.distill.weight=0.0: must be in (0, 1]"),
    (["loss.distill.weight=1.5"], "loss.distill.weight=1.5: must be in (0, 1]"),
    (["loss.distill.temperature=0"], "loss.distill.temperature=0.0: must be > 0"),
    (["loss.kind=siglip"], "loss.distill needs loss.kind=infonce loss.impl=naive (got siglip, naive)"),
    (["loss.impl=tiled"], "loss.distill needs loss.kind=infonce loss.impl=naive (got infonce, tiled)"),
    (["data.hard_negatives=2"], "loss.distill with data.hard_negatives=2"),
    (["loss.distill.stored=true", "data.caption_weights={txt: 1.0, synthetic.txt: 1.0}"],
     "loss.distill.stored=true reads the teacher's embeddings of KEY.txt's captions only"),
])
def test_impossible_combinations_are_refused_in_one_line(base, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, base + overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
