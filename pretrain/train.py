"""The train loop. Everything it needs is built by pretrain/run.py; this file is only the loop.

Exit codes: 0 done, EXIT_PREEMPTED (75) checkpointed after SIGTERM/SIGUSR1, EXIT_NONFINITE (3) too
many consecutive non-finite steps (the message names the last good checkpoint).
"""
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional

import torch
import torch.distributed as dist

from pretrain.checkpoint import EXIT_NONFINITE, EXIT_PREEMPTED, CheckpointManager, PreemptionFlag
from modeling.preprocess import images_to_input
from pretrain.metrics import MetricsLogger
from pretrain.schedule import lr_factor, set_lr
from pretrain.step import TextInput, train_step


@dataclass
class Trainer:
    cfg: Any  # RunConfig
    engine: Any  # DeepSpeed engine
    loss_fn: torch.nn.Module
    base_lrs: list
    accum: int  # micro-batches per step
    total_steps: int
    mean: list
    std: list
    checkpoints: CheckpointManager
    metrics: MetricsLogger
    preempt: PreemptionFlag
    evaluate: Optional[Callable[[int], dict]] = None  # periodic retrieval eval (every rank calls it)
    ema: Any = None  # pretrain.ema.ModelEMA, updated after every applied step


def text_input(batch: dict, dtype: torch.dtype, device) -> TextInput:
    """The batch's text side on the device: stored vectors (cast like the images) or tokens, with the
    sample ids whenever they can repeat (several captions per image, or an image drawn twice)."""
    vectors = "text_vectors" in batch
    rows = batch["text_vectors"].to(device, dtype) if vectors else batch["tokens"].to(device, non_blocking=True)
    ids = batch.get("sample_ids")
    if ids is None:
        return TextInput(rows, vectors)
    per_image = rows.shape[0] // max(1, ids.shape[0])
    ids = ids.to(device)
    return TextInput(rows, vectors, image_ids=ids, ids=ids.repeat_interleave(per_image))


def _agree(flags, device) -> list:
    """One all-reduce (MAX) per step: every rank checkpoints / stops at the same step."""
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def train_loop(t: Trainer, batches: Iterable[dict], data_state: Callable[[], dict],
               counters: Callable[[], Dict[str, int]], state: dict) -> int:
    """state: trainer_state dict (step, samples_seen, nonfinite_total, nonfinite_consecutive, overflow_total),
    updated in place."""
    cfg, engine, rank = t.cfg, t.engine, dist.get_rank()
    batches = iter(batches)
    while state["step"] < t.total_steps:
        t0 = time.perf_counter()
        batch = next(batches, None)
        wait = time.perf_counter() - t0
        if batch is None:
            break  # the data ran out before the step budget (epoch mode)
        lr = set_lr(engine.optimizer, t.base_lrs, lr_factor(state["step"], t.total_steps, cfg.optim))
        images = images_to_input(batch["images"], t.mean, t.std, engine)
        result = train_step(engine, t.loss_fn, images, text_input(batch, images.dtype, engine.device),
                            t.accum, cfg)
        state["step"] += 1
        state["samples_seen"] += cfg.train.global_batch_size
        if result.applied:
            state["nonfinite_consecutive"] = 0
            if t.ema is not None:
                t.ema.update()
        elif result.overflow:
            state["overflow_total"] += 1
        else:
            state["nonfinite_total"] += 1
            state["nonfinite_consecutive"] += 1
            if rank == 0:
                print(f"step {state['step']}: non-finite loss {result.loss} / grad norm {result.grad_norm}: "
                      f"step skipped, weights unchanged ({state['nonfinite_total']} so far)", file=sys.stderr)
            if state["nonfinite_consecutive"] >= cfg.train.max_nonfinite_steps:
                if rank == 0:
                    last = t.checkpoints.last_tag or "none (no checkpoint was saved)"
                    print(f"stopping: {state['nonfinite_consecutive']} consecutive non-finite steps "
                          f"(train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); last good checkpoint: "
                          f"{last}; resume from it with a lower optim.lr or higher optim.warmup_steps", file=sys.stderr)
                return EXIT_NONFINITE
        t.metrics.add(batch["images"].shape[0], wait)
        if state["step"] % cfg.train.log_every == 0 or state["step"] == t.total_steps:
            t.metrics.log(state["step"], {"loss": result.loss, "lr": lr, "logit_scale": result.logit_scale,
                                          "grad_norm": result.grad_norm, "nonfinite_steps": state["nonfinite_total"],
                                          "loss_scale_overflows": state["overflow_total"]},
                          counters())
        if t.evaluate is not None and cfg.eval.every_steps > 0 and state["step"] % cfg.eval.every_steps == 0:
            t.evaluate(state["step"])
        preempted, due = _agree([t.preempt.signum is not None, t.checkpoints.due(state["step"])], engine.device)
        if preempted or due:
            t.checkpoints.save(engine, dict(state, data=data_state()))
        if preempted:
            if rank == 0:
                print(f"preempted: checkpoint {t.checkpoints.last_tag} written at step {state['step']}; "
                      f"exiting with {EXIT_PREEMPTED} so the job is requeued", file=sys.stderr)
            return EXIT_PREEMPTED
    return 0
