"""The train loop. Everything it needs is built by pretrain/run.py; this file is only the loop.

Exit codes: 0 done, EXIT_PREEMPTED (75) checkpointed after SIGTERM/SIGUSR1, EXIT_NONFINITE (3) diverged
(too many consecutive non-finite steps, or a loss spike) with no rollback left (the message names the last
good checkpoint: pretrain/rollback.py). A failed checkpoint write raises CheckpointSaveFailed (run.py: 74).
"""
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from clipforge.pretrain.checkpoint import EXIT_PREEMPTED, CheckpointManager, PreemptionFlag
from clipforge.pretrain.feed import DataFeed
from clipforge.modeling.preprocess import images_to_input
from clipforge.pretrain.metrics import MetricsLogger
from clipforge.pretrain.rollback import DivergenceWatch, roll_back
from clipforge.pretrain.schedule import lr_factor, set_lr
from clipforge.pretrain.step import TextInput, train_step
from clipforge.pretrain.torch_compile import CompileClock


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
    stages: Any = None  # pretrain.stages.StageSwitch (train.stages), entered before every step
    distill: Any = None  # pretrain.distill.Distillation (loss.distill): each batch's teacher features for the loss


def text_input(batch: dict, dtype: torch.dtype, device) -> TextInput:
    """The batch's text side on the device: stored vectors (cast like the images) or tokens, with the
    sample ids whenever they can repeat (several captions per image, or an image drawn twice), and the hard
    negatives' tokens when the loader reads them (data.hard_negatives)."""
    vectors = "text_vectors" in batch
    rows = batch["text_vectors"].to(device, dtype) if vectors else batch["tokens"].to(device, non_blocking=True)
    negatives = batch["neg_tokens"].to(device, non_blocking=True) if "neg_tokens" in batch else None
    ids = batch.get("sample_ids")
    if ids is None:
        return TextInput(rows, vectors, negatives=negatives)
    per_image = rows.shape[0] // max(1, ids.shape[0])
    ids = ids.to(device)
    return TextInput(rows, vectors, image_ids=ids, ids=ids.repeat_interleave(per_image), negatives=negatives)


def _agree(flags, device) -> list:
    """One all-reduce (MAX) per step: every rank checkpoints / stops at the same step."""
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def train_loop(t: Trainer, feed: DataFeed, state: dict) -> int:
    """state: trainer_state dict (step, samples_seen, nonfinite_total, nonfinite_consecutive, overflow_total,
    rollbacks, recent_losses), updated in place."""
    cfg, engine, rank = t.cfg, t.engine, dist.get_rank()
    watch = DivergenceWatch(cfg.train, rank)
    compile_clock = CompileClock(cfg.train.compile, rank)
    while state["step"] < t.total_steps:
        if t.stages is not None:  # a new stage: its patch dropout, its loader (also after a rollback into it)
            t.stages.enter(state["step"], feed)
        t0 = time.perf_counter()
        batch = feed.next()
        wait = time.perf_counter() - t0
        if batch is None:
            break  # the data ran out before the step budget (epoch mode)
        lr = set_lr(engine.optimizer, t.base_lrs, lr_factor(state["step"], t.total_steps, cfg.optim))
        images = images_to_input(batch["images"], t.mean, t.std, engine)
        text = text_input(batch, images.dtype, engine.device)
        if t.distill is not None:
            text.teacher = t.distill.features(batch, engine.device)
        step_start = time.perf_counter()
        result = train_step(engine, t.loss_fn, images, text, t.accum, cfg)
        compile_clock.step_took(time.perf_counter() - step_start)
        state["step"] += 1
        state["samples_seen"] += cfg.train.global_batch_size
        diverged = watch.after_step(result, state)
        if result.applied and t.ema is not None:
            t.ema.update()
        preempted, due, any_diverged = _agree([t.preempt.signum is not None, t.checkpoints.due(state["step"]),
                                               diverged is not None], engine.device)
        if any_diverged:
            code = roll_back(t, feed, state, diverged)
            if code is not None:
                return code
            continue
        t.metrics.add(batch["images"].shape[0], wait)
        if state["step"] % cfg.train.log_every == 0 or state["step"] == t.total_steps:
            t.metrics.log(state["step"], {"loss": result.loss, "lr": lr, "logit_scale": result.logit_scale,
                                          "grad_norm": result.grad_norm, "nonfinite_steps": state["nonfinite_total"],
                                          "loss_scale_overflows": state["overflow_total"],
                                          **compile_clock.metrics()},
                          feed.counters())
        if t.evaluate is not None and cfg.eval.every_steps > 0 and state["step"] % cfg.eval.every_steps == 0:
            t.evaluate(state["step"])
        if preempted or due:
            t.checkpoints.save(engine, dict(state, data=feed.state_dict()))
        if preempted:
            if rank == 0:
                print(f"preempted: checkpoint {t.checkpoints.last_tag} written at step {state['step']}; "
                      f"exiting with {EXIT_PREEMPTED} so the job is requeued", file=sys.stderr)
            return EXIT_PREEMPTED
    return 0
