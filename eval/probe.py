"""Linear probe on fixed features: CLIP_benchmark 1.6.2's procedure (clip_benchmark/metrics/linear_probe.py).

    m, tried = linear_probe(train_x, train_y, test_x, test_y, num_classes, val=(val_x, val_y), cfg=ProbeConfig())
    m["acc1"], m["acc5"], m["mean_per_class_recall"], m["weight_decay"]

Procedure: a torch.nn.Linear(d, C) trained with AdamW (lr, weight decay), cross-entropy, a cosine learning
rate per step without warm-up, `epochs` passes over shuffled batches. The weight decay is chosen on the
validation split like CLIP's A.3 sweep as CLIP_benchmark runs it: a grid of 97 values in [1e-6, 1e2]
(log-spaced), first 7 of them (every 16th), then three-point refinements around the best with steps 8, 4,
2, 1; a candidate replaces the best only with a strictly higher val acc1. The final probe is trained with the
chosen value on train + val (few-shot: on the few-shot train set only); without a val split the weight
decay is 0. Random numbers are drawn exactly as CLIP_benchmark's torch.manual_seed(seed) + DataLoader(shuffle)
draw them (the same init, the same batches), from a forked RNG so the caller's stream is left alone.
"""
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.eval.classification import check_labels, metrics_from_ranks, ranks_from_logits
from clipforge.eval.errors import EvalDataError
from clipforge.eval.task_options import ProbeConfig

# np.logspace, not torch: the exact float64 values CLIP_benchmark tries (and reports as weight_decay).
WD_GRID: List[float] = np.logspace(-6, 2, num=97).tolist()
WD_FIRST = list(range(0, 97, 16))  # the 7 values of np.logspace(-6, 2, 7) inside the grid


def _draw_seed() -> int:
    return int(torch.empty((), dtype=torch.int64).random_().item())


def train_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                cfg: ProbeConfig) -> torch.nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        probe = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
        opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        for epoch in range(cfg.epochs):
            _draw_seed()  # a DataLoader iterator draws its workers' base seed first ...
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(_draw_seed()))  # ... then shuffles
            for i in range(steps_per_epoch):
                step = epoch * steps_per_epoch + i
                for group in opt.param_groups:  # numpy's cos: the float64 values CLIP_benchmark's schedule sets
                    group["lr"] = 0.5 * (1 + np.cos(np.pi * step / total)) * cfg.lr
                idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size].to(x.device)
                opt.zero_grad()
                F.cross_entropy(probe(x[idx]), y[idx]).backward()
                opt.step()
    return probe


@torch.no_grad()
def predict(probe: torch.nn.Linear, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([probe(x[a:a + batch_size]) for a in range(0, len(x), batch_size)]) if len(x) else \
        torch.zeros(0, probe.out_features)


def _val_acc1(train, val, num_classes: int, wd: float, cfg: ProbeConfig) -> float:
    logits = predict(train_probe(*train, num_classes, wd, cfg), val[0], cfg.batch_size)
    return float((ranks_from_logits(logits, val[1]) == 0).sum()) / len(val[1])


def sweep_weight_decay(train: Tuple[torch.Tensor, torch.Tensor], val: Tuple[torch.Tensor, torch.Tensor],
                       num_classes: int, cfg: ProbeConfig) -> Tuple[float, Dict[float, float]]:
    """-> (chosen weight decay, val acc1 of every value tried). Training is deterministic for a given value
    (same seed, same batches), so each value is trained once even when a refinement round revisits it."""
    tried: Dict[int, float] = {}

    def peak(candidates: List[int]) -> int:
        best, best_acc = 0, 0.0  # CLIP_benchmark's start: index 0 unless some candidate beats acc 0
        for idx in candidates:
            if idx not in tried:
                tried[idx] = _val_acc1(train, val, num_classes, WD_GRID[idx], cfg)
            if tried[idx] > best_acc:
                best, best_acc = idx, tried[idx]
        return best

    idx, span = peak(WD_FIRST), 8
    while span > 0:
        idx = peak([max(idx - span, 0), idx, min(idx + span, len(WD_GRID) - 1)])
        span //= 2
    return WD_GRID[idx], {WD_GRID[i]: acc for i, acc in sorted(tried.items())}


def fewshot_order(y: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Indices of the training samples in a seeded random order, keeping the first k of each class (all when
    k < 0): CLIP_benchmark's selection and order, so its batches are these."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    if k < 0:
        return perm
    seen: Dict[int, int] = {}
    keep = []
    for p in perm.tolist():
        c = int(y[p])
        if seen.get(c, 0) < k:
            seen[c] = seen.get(c, 0) + 1
            keep.append(p)
    short = {c: n for c, n in seen.items() if n < k}
    if short:
        raise EvalDataError(f"fewshot_k={k}: classes {sorted(short)[:5]} have only {min(short.values())} training "
                         "samples; lower fewshot_k")
    return torch.tensor(keep, dtype=torch.long)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, val: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                 cfg: Optional[ProbeConfig] = None) -> Tuple[Dict[str, float], Dict[float, float]]:
    """-> (acc1, acc5, mean_per_class_recall, weight_decay; val acc1 of each weight decay tried)."""
    cfg = cfg or ProbeConfig()
    for labels in (train_y, test_y) + ((val[1],) if val else ()):
        check_labels(labels, num_classes)
    order = fewshot_order(train_y, cfg.fewshot_k, cfg.seed)
    train = (train_x[order].float(), train_y[order].long())
    tried: Dict[float, float] = {}
    if val is not None and len(val[1]):
        val = (val[0].float(), val[1].long())
        wd, tried = sweep_weight_decay(train, val, num_classes, cfg)
        if cfg.fewshot_k < 0:  # full data: the final probe also learns from the val split
            train = (torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]]))
    else:
        wd = 0.0
    probe = train_probe(*train, num_classes, wd, cfg)
    ranks = ranks_from_logits(predict(probe, test_x.float(), cfg.batch_size), test_y.long())
    metrics = metrics_from_ranks(ranks, test_y.long(), num_classes)
    metrics["weight_decay"] = wd
    return metrics, tried
