"""Learning-rate schedule: linear warmup, then cosine / constant / linear decay to min_lr_ratio.

A pure function of the step (no state to checkpoint): a resumed run gets the same lr from its step.
"""
import math

from clipforge.modeling.config import OptimConfig


def lr_factor(step: int, total_steps: int, optim: OptimConfig) -> float:
    """Multiplier of each group's base lr for optimizer step `step` (0-based)."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / decay_steps)
    floor = optim.min_lr_ratio
    if optim.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)  # linear


def set_lr(optimizer, base_lrs, factor: float) -> float:
    """Sets every param group's lr = its base lr x factor; returns the first group's lr (for logs)."""
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor
    return optimizer.param_groups[0]["lr"]
