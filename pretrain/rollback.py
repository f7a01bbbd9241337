"""Divergence: non-finite steps, loss spikes, and rolling back to the last good checkpoint.

After each step `DivergenceWatch.after_step` says whether the run diverged: `train.max_nonfinite_steps`
non-finite steps in a row, or (`train.spike_factor`, off by default) an applied step's loss above
spike_factor x the median of the last `train.spike_window` losses (judged once that many are known; they
are kept in the trainer state, so a resumed run judges as the uninterrupted one would). The loop all-reduces
that flag with its others, so every rank agrees. `roll_back` reloads the newest intact checkpoint, skips the
next `train.skip_batches_after_rollback` batches of the data plan (null: every batch since that checkpoint,
up to the one that diverged) and writes an event row to metrics.jsonl; the loop goes on. After
`train.max_rollbacks` rollbacks (0: at the first divergence) the run stops with EXIT_NONFINITE (3), naming
the checkpoint to resume from.
"""
import os
import statistics
import sys
from typing import Optional

from clipforge.pretrain.checkpoint import EXIT_NONFINITE


class DivergenceWatch:
    def __init__(self, train_cfg, rank: int):
        self.cfg, self.rank = train_cfg, rank

    def after_step(self, result, state: dict) -> Optional[str]:
        """Counts the step into state (non-finite / overflow counters, recent losses); -> why the run
        diverged, or None."""
        if result.applied:
            state["nonfinite_consecutive"] = 0
            return self._spike(result.loss, state["recent_losses"])
        if result.overflow:  # fp16 loss-scale overflow: DeepSpeed's scaler handles it
            state["overflow_total"] += 1
            return None
        state["nonfinite_total"] += 1
        state["nonfinite_consecutive"] += 1
        if self.rank == 0:
            print(f"step {state['step']}: non-finite loss {result.loss} / grad norm {result.grad_norm}: "
                  f"step skipped, weights unchanged ({state['nonfinite_total']} so far)", file=sys.stderr)
        if state["nonfinite_consecutive"] >= self.cfg.max_nonfinite_steps:
            return (f"{state['nonfinite_consecutive']} consecutive non-finite steps "
                    f"(train.max_nonfinite_steps={self.cfg.max_nonfinite_steps})")
        return None

    def _spike(self, loss: float, recent: list) -> Optional[str]:
        factor, window = self.cfg.spike_factor, self.cfg.spike_window
        if factor is None:
            return None
        if len(recent) >= window:
            median = statistics.median(recent)
            if loss > factor * median:  # the spiking loss stays out of the history
                return (f"loss {loss:.4f} > train.spike_factor={factor} x {median:.4f} "
                        f"(the median of the last {window} losses)")
        recent.append(loss)
        del recent[:-window]
        return None


def _stop(t, state: dict, reason: str, path: Optional[str]) -> int:
    if t.checkpoints.rank == 0:
        used = state["rollbacks"]
        after = f" after {used} rollback(s) (train.max_rollbacks={t.cfg.train.max_rollbacks})" \
            if t.cfg.train.max_rollbacks > 0 else ""
        last = os.path.basename(path) if path else "none (no intact checkpoint was saved)"
        print(f"stopping: {reason}{after}; last good checkpoint: {last}; resume from it with a lower optim.lr "
              f"or higher optim.warmup_steps", file=sys.stderr)
    return EXIT_NONFINITE


def _reload_ema(t, path: str) -> None:
    if t.ema is not None:
        t.checkpoints.restore_ema(t.ema, path)


def roll_back(t, feed, state: dict, reason: Optional[str]) -> Optional[int]:
    """Every rank, after the loop agreed the run diverged (reason None: it was another rank's loss).
    t: the Trainer; feed: its DataFeed. -> None (rolled back: go on) or EXIT_NONFINITE (stop)."""
    reason = reason or "a loss spike on another rank"
    path = t.checkpoints.intact_latest()
    if path is None or state["rollbacks"] >= t.cfg.train.max_rollbacks:
        return _stop(t, state, reason, path)
    diverged_at = state["step"]
    saved = t.checkpoints.load(t.engine, path)
    feed.restart(saved.get("data"))
    wanted = t.cfg.train.skip_batches_after_rollback
    skipped = feed.skip(diverged_at - saved["step"] if wanted is None else wanted)
    # The run's counts of what happened stay; where it is goes back to the checkpoint.
    state.update(step=saved["step"], samples_seen=saved["samples_seen"], nonfinite_consecutive=0,
                 recent_losses=list(saved.get("recent_losses", [])), rollbacks=state["rollbacks"] + 1)
    _reload_ema(t, path)
    tag = os.path.basename(path)
    t.metrics.event({"event": "rollback", "step": diverged_at, "reason": reason, "checkpoint": tag,
                     "to_step": saved["step"], "batches_skipped": skipped, "rollback": state["rollbacks"]})
    if t.checkpoints.rank == 0:
        print(f"rollback {state['rollbacks']}/{t.cfg.train.max_rollbacks} at step {diverged_at}: {reason}; "
              f"reloaded {tag}, skipped the next {skipped} batches", file=sys.stderr)
    return None
