"""pretrain/engine.py's NonfiniteGuard in one process, on a stand-in engine: which stage clips and checks is the
guard's business (train_step only calls guard.step()). The DeepSpeed runs of the same paths (ZeRO-0 clip and NaN
skip against a single process, ZeRO-2/3 DeepSpeed's own) are in tests/pretrain/test_trainer_dist.py."""
import math

import pytest
import torch

from clipforge.modeling.config import load_config
from clipforge.pretrain.engine import NonfiniteGuard, nonfinite_guards


class StandInEngine:
    """The engine methods the guard uses; `step` records the gradients it saw (None: dropped)."""

    def __init__(self, grads, reported_norm=None, applied=True):
        self.module = torch.nn.Linear(2, 1, bias=False)
        self.module.weight.grad = torch.tensor([grads])
        self.reported_norm, self.applied, self.stepped_with = reported_norm, applied, "not stepped"

    def zero_grad(self):
        self.module.weight.grad = None

    def step(self):
        grad = self.module.weight.grad
        self.stepped_with = None if grad is None else grad.tolist()

    def get_global_grad_norm(self):
        return self.reported_norm

    def was_step_applied(self):
        return self.applied


def guard_for(engine, *overrides):
    cfg = load_config(None, ["data.sources=[{path: x}]", "train.steps=1", *overrides])
    return nonfinite_guards(engine, cfg)


def test_zero0_fp32_clips_to_grad_clip_and_reports_the_norm_before_clipping():
    engine = StandInEngine([3.0, 4.0])
    stepped = guard_for(engine, "deepspeed.zero_stage=0", "deepspeed.precision=fp32", "optim.grad_clip=1").step()
    assert stepped.grad_norm == 5.0 and not stepped.overflow
    assert engine.stepped_with[0] == pytest.approx([0.6, 0.8], rel=1e-5)  # scaled to norm 1 (torch's 1 / (5 + 1e-6))


def test_zero0_fp32_with_clipping_off_measures_without_clipping():
    engine = StandInEngine([3.0, 4.0])
    stepped = guard_for(engine, "deepspeed.zero_stage=0", "deepspeed.precision=fp32", "optim.grad_clip=0").step()
    assert stepped.grad_norm == 5.0 and engine.stepped_with == [[3.0, 4.0]]


def test_zero0_fp32_drops_a_non_finite_gradient_before_the_step():
    engine = StandInEngine([float("nan"), 1.0])
    stepped = guard_for(engine, "deepspeed.zero_stage=0", "deepspeed.precision=fp32").step()
    assert math.isnan(stepped.grad_norm) and engine.stepped_with is None


def test_other_stages_leave_the_gradient_to_deepspeed_and_read_its_norm():
    engine = StandInEngine([3.0, 4.0], reported_norm=torch.tensor(7.5))
    guard = NonfiniteGuard(engine, clip_max=None, fp16=False)
    stepped = guard.step()
    assert stepped.grad_norm == 7.5 and not stepped.overflow and engine.stepped_with == [[3.0, 4.0]]
    assert NonfiniteGuard(StandInEngine([1.0, 1.0]), clip_max=None, fp16=False).step().grad_norm is None


def test_fp16_loss_scaler_skip_is_an_overflow_without_a_norm():
    engine = StandInEngine([3.0, 4.0], reported_norm=7.5, applied=False)
    stepped = NonfiniteGuard(engine, clip_max=None, fp16=True).step()
    assert stepped.overflow and stepped.grad_norm is None
