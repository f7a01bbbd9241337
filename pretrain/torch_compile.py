"""train.compile: torch.compile of the model inside the DeepSpeed engine (pretrain/engine.py, step 6 of
build_engine), and what it costs, as the user waits for it: the first step.

How: `engine.compile(backend="inductor")`, DeepSpeed's own, which calls `module.compile()` on the engine's
module. That compiles the module in place: its class, its state-dict keys (checkpoints, export, EMA, elastic
resume) and DeepSpeed's hooks stay as they are, so a run resumes with compile switched on or off. Two other ways
were tried and dropped: `torch.compile(model)` before deepspeed.initialize wraps the model in an OptimizedModule
whose state-dict keys all gain an `_orig_mod.` prefix; compiling each transformer block (`block.compile()`) fails
at ZeRO-3 on the first forward ("b must be 2D": nn.MultiheadAttention reads out_proj.weight without calling
out_proj, and DeepSpeed's gather on attribute access is skipped while dynamo traces).

Compiling is lazy: the first forward and backward trace the model and build its kernels (C++ through gcc on a
CPU, Triton on CUDA); the checkpointed blocks of model.grad_checkpointing become checkpoint regions of the graph,
recomputed in the compiled backward. At ZeRO-1/2 the model is one graph. ZeRO-3 gathers parameters in forward
hooks that DeepSpeed marks torch.compiler.disable, so dynamo breaks the graph there and runs them eagerly between
compiled pieces (tiny model: 15 graphs and 46 breaks per rank); making the blocks ZeRO-3 leaf modules (one hook
per block) left those counts as they were, so it is not done.
"""
import sys
from typing import List, Optional


def compile_model(engine, cfg, rank: int) -> None:
    """cfg: the RunConfig; nothing unless train.compile."""
    if not cfg.train.compile:
        return
    engine.compile(backend="inductor")
    if rank == 0:
        print("train.compile: torch.compile (inductor) of the model; the first step compiles it", file=sys.stderr)


class CompileClock:
    """compile_s = the first step's time minus the second's: what compiling added to the run (the graphs are
    built during the first forward and backward). Rank 0 prints it once after the second step; it goes into
    the next metrics row (metrics.jsonl, tensorboard train/compile_s). Disabled (train.compile=false): nothing."""

    def __init__(self, enabled: bool, rank: int):
        self.enabled, self.rank = enabled, rank
        self.step_s: List[float] = []
        self.pending: Optional[float] = None

    def step_took(self, seconds: float) -> None:
        if not self.enabled or len(self.step_s) == 2:
            return
        self.step_s.append(seconds)
        if len(self.step_s) == 2:
            first, second = self.step_s
            self.pending = max(0.0, first - second)
            if self.rank == 0:
                print(f"train.compile: compiling took {self.pending:.1f} s (first step {first:.1f} s, "
                      f"second {second:.2f} s)", file=sys.stderr)

    def metrics(self) -> dict:
        """{"compile_s": seconds} once, when known; {} otherwise."""
        out = {} if self.pending is None else {"compile_s": self.pending}
        self.pending = None
        return out
