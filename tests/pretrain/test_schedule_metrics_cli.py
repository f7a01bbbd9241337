"""Schedule values, RNG state round trip, metrics helpers and the CLI's config errors (one process)."""
import json
import random

import numpy as np
import pytest
import torch

from clipforge.pretrain.checkpoint import rng_state, set_rng_state
from clipforge.pretrain.cli import main
from clipforge.modeling.config import OptimConfig
from clipforge.modeling.flops import train_flops_per_sample
from clipforge.pretrain.metrics import plot_loss
from clipforge.modeling.model import resolve_model_config
from clipforge.pretrain.schedule import lr_factor


def test_warmup_then_cosine_linear_constant():
    cos = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert [lr_factor(s, 110, cos) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(10, 110, cos) == 1.0
    assert lr_factor(60, 110, cos) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 * 0.5
    assert lr_factor(110, 110, cos) == pytest.approx(0.1)
    lin = OptimConfig(schedule="linear", warmup_steps=0, min_lr_ratio=0.0)
    assert lr_factor(25, 100, lin) == pytest.approx(0.75)
    assert lr_factor(99, 100, OptimConfig(schedule="constant", warmup_steps=0)) == 1.0


def test_rng_states_round_trip_through_json():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    saved = json.loads(json.dumps(rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_flops_per_sample_of_vit_b_32_matches_open_clips_profile():
    # open_clip's model_profile.csv: ViT-B-32 image 4.41 + text 2.96 GMACs forward = 14.78 GFLOPs;
    # training = 3x forward.
    flops = train_flops_per_sample(resolve_model_config("ViT-B-32"))
    assert flops == pytest.approx(3 * 14.78e9, rel=0.01)


def test_loss_png_is_drawn_from_metrics_jsonl(tmp_path):
    rows = [{"step": s, "loss": 3.0 / s} for s in range(1, 5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_loss(str(tmp_path))
    assert out.endswith("loss.png") and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_config_errors_are_one_line_with_exit_2(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("data: {sources: [{path: x}]}\ntrain: {steps: 1}\n")
    assert main(["--config", str(config), "deepspeed.zero_stage=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "deepspeed.zero_stage=5" in err and "allowed values" in err
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "torchrun" in capsys.readouterr().out
