"""Runs for tests/pretrain/test_elastic_resume_dist.py: a checkpoint resumed on another number of ranks.

    torchrun --nproc_per_node=2 elastic_worker.py full OUT   # uninterrupted, 6 steps, checkpoints at 2, 4, 6
    python elastic_worker.py down OUT                        # 1 rank from full's step 2 (checkpoints at 4, 6)
    torchrun --nproc_per_node=2 elastic_worker.py up OUT     # 2 ranks from down's step 4

At ZeRO-2 then ZeRO-3 (ZeRO-3 patches torch's linear process-wide: a ZeRO-2 run after it would round
differently), each with a model EMA. Global batch 8 in micro-batches of 4: on 2 ranks one each, on 1 rank two
accumulated with feature caching, so every forward has the same shapes and the loss the same 8 negatives.
"""
import os
import sys

import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))

from synthetic import synthetic_factory  # noqa: E402

from clipforge.modeling.config import load_config  # noqa: E402
from clipforge.pretrain.run import run  # noqa: E402

TINY = os.path.abspath(os.path.join(HERE, "..", "..", "configs", "models", "tiny-vit.json"))
# mode -> (the run whose checkpoint it resumes, at which step); all 6 steps long (the lr schedule's length)
RUNS = {"full": (None, None), "down": ("full", 2), "up": ("down", 4)}


def main(mode: str, out: str) -> None:
    source, at = RUNS[mode]
    codes = {}
    for stage in (2, 3):
        resume = [f"checkpoint.resume={out}/{source}_z{stage}/checkpoints/step{at:08d}"] if source else []
        cfg = load_config(None, [f"model.name={TINY}", "data.sources=[{path: synthetic}]", "train.steps=6",
                                 "train.global_batch_size=8", "train.micro_batch_size=4", "train.log_every=1",
                                 f"train.run_dir={out}/{mode}_z{stage}", "train.device=cpu",
                                 f"deepspeed.zero_stage={stage}", "deepspeed.precision=fp32", "optim.warmup_steps=1",
                                 "model.ema_decay=0.9", "checkpoint.every_steps=2", "checkpoint.keep_last=5",
                                 *resume])
        codes[f"{mode}_z{stage}"] = run(cfg, synthetic_factory)
    if dist.get_rank() == 0:
        with open(f"{out}/{mode}.codes", "w") as f:
            f.write(repr(codes))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
