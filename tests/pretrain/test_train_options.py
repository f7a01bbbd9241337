"""model.grad_checkpointing and model.patch_dropout in real tiny trainings (tests/pretrain/tiny_runs.py: one child
process, a world of one, DeepSpeed ZeRO-0 fp32 on CPU, 3 steps of the seeded synthetic batches each).

- grad_checkpointing: the blocks really run under torch.utils.checkpoint (counted), and the run's losses and
  final weights equal the run without it exactly (recomputation in fp32 is deterministic on CPU).
- patch_dropout: the vision transformer really sees fewer tokens in training, two runs with the same seed are
  identical, and the losses differ from patch_dropout=0.
"""
import math
from pathlib import Path

import pytest
import torch

from tests.pretrain.tiny_run_helpers import losses, run_tiny

STEPS = 3
# tiny-vit: 64 px / 16 = 16 patches + the class token
TOKENS, PATCHES = 17, 16
RUNS = {
    "plain": ["checkpoint.export_at_end=true"],
    "grad_ckpt": ["model.grad_checkpointing=true", "checkpoint.export_at_end=true"],
    "pd": ["model.patch_dropout=0.5"],
    "pd_again": ["model.patch_dropout=0.5"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("options")
    return out, run_tiny(out, [{"name": name, "overrides": [f"train.steps={STEPS}", *extra]}
                               for name, extra in RUNS.items()])


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "model.pt", weights_only=True, map_location="cpu")


def test_grad_checkpointing_trains_with_the_same_losses_and_weights(runs):
    out, reports = runs
    assert reports["plain"]["code"] == 0 and reports["grad_ckpt"]["code"] == 0
    # Every block of both towers (2 + 2 layers) went through torch.utils.checkpoint at every step ...
    assert reports["grad_ckpt"]["checkpoint_calls"] == 4 * STEPS
    assert reports["plain"]["checkpoint_calls"] == 0
    plain, ckpt = losses(out / "plain"), losses(out / "grad_ckpt")
    assert len(plain) == STEPS and all(math.isfinite(x) for x in plain)
    # ... and recomputing the activations in backward changed nothing: fp32 on CPU is bit-exact.
    assert ckpt == plain
    a, b = _weights(out / "plain"), _weights(out / "grad_ckpt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the run did train: the weights moved away from the (seeded) initial ones
    assert plain[0] != plain[-1]


def test_patch_dropout_drops_tokens_in_training_and_is_seeded(runs):
    out, reports = runs
    assert reports["pd"]["code"] == 0 and reports["pd_again"]["code"] == 0
    # open_clip keeps int(16 * 0.5) = 8 of the 16 patches, plus the class token, at every step
    assert reports["pd"]["vision_tokens"] == [PATCHES // 2 + 1] * STEPS
    assert reports["plain"]["vision_tokens"] == [TOKENS] * STEPS
    dropped, again, plain = losses(out / "pd"), losses(out / "pd_again"), losses(out / "plain")
    assert len(dropped) == STEPS and all(math.isfinite(x) for x in dropped)
    assert dropped == again          # the masks come from the seeded RNG: a rerun is identical
    assert dropped[0] != plain[0]    # and they change the very first forward
    assert all(a != b for a, b in zip(dropped, plain))
