"""Runs for tests/pretrain/test_compile_dist.py, in one launch of 2 gloo ranks:

    torchrun --nproc_per_node=2 compile_worker.py OUT

At ZeRO-1, 2 and 3 (in that order: ZeRO-3 patches torch's linear process-wide, which rounds differently for the
runs after it), the same 20 steps with model.grad_checkpointing, eager (z<stage>_eager) then with train.compile
(z<stage>_compiled); and ZeRO-2's eager checkpoint of step 10 resumed with train.compile (z2_resumed_compiled).
The model is tiny-vit with one block per tower (OUT/tiny-1-block.json): compiling is most of the launch's time,
and with tiny-vit's two blocks per tower it took 68 s instead of 28 s at ZeRO-1 (the launch 150 s instead of
94 s; 2 ranks at nice 19 on this 2-core machine, load 2-3).
Each run writes OUT/<name>/metrics.jsonl; OUT/report.json holds per run the exit code, the graphs dynamo built,
its graph breaks and the wall seconds. Checkpoints are removed once read (~80 MB each): the test reads metrics.
"""
import json
import os
import shutil
import sys
import time

import torch._dynamo.utils
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))

from synthetic import synthetic_factory  # noqa: E402

from clipforge.atomic import write_atomic  # noqa: E402
from clipforge.modeling.config import load_config  # noqa: E402
from clipforge.pretrain.run import run  # noqa: E402

TINY = os.path.abspath(os.path.join(HERE, "..", "..", "configs", "models", "tiny-vit.json"))
STEPS = 20


def dynamo_totals() -> dict:
    counters = torch._dynamo.utils.counters
    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values())}


def one_block_model(out: str) -> str:
    with open(TINY) as f:
        model = json.load(f)
    model["vision_cfg"]["layers"] = model["text_cfg"]["layers"] = 1
    path = os.path.join(out, "tiny-1-block.json")
    write_atomic(path, json.dumps(model))  # both ranks, the same bytes: no process group yet to wait on
    return path


def one_run(out: str, model: str, name: str, stage: int, compiled: bool, *extra: str) -> dict:
    """The run's checkpoints are removed after it, unless extra asks for some (checkpoint.every_steps)."""
    cfg = load_config(None, [f"model.name={model}", "data.sources=[{path: synthetic}]", f"train.steps={STEPS}",
                             "train.global_batch_size=8", "train.log_every=1", f"train.run_dir={out}/{name}",
                             "train.device=cpu", f"train.compile={str(compiled).lower()}",
                             "model.grad_checkpointing=true", f"deepspeed.zero_stage={stage}",
                             "deepspeed.precision=fp32", "optim.warmup_steps=1", "checkpoint.every_steps=1000",
                             "checkpoint.elastic=false", "checkpoint.export_at_end=false", *extra])
    before, t0 = dynamo_totals(), time.perf_counter()
    code = run(cfg, data_factory=synthetic_factory)
    after = dynamo_totals()
    if cfg.checkpoint.every_steps == 1000:
        remove_checkpoints(out, name)
    return {name: {"code": code, "seconds": time.perf_counter() - t0, **{k: after[k] - before[k] for k in after}}}


def remove_checkpoints(out: str, name: str) -> None:
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(f"{out}/{name}/checkpoints")


def main(out: str) -> None:
    report, model = {}, one_block_model(out)
    for stage in (1, 2, 3):
        # ZeRO-2's eager run also checkpoints at step 10, where z2_resumed_compiled picks it up with train.compile
        extra = ["checkpoint.every_steps=10"] if stage == 2 else []
        report.update(one_run(out, model, f"z{stage}_eager", stage, False, *extra))
        report.update(one_run(out, model, f"z{stage}_compiled", stage, True))
        if stage == 2:
            report.update(one_run(out, model, "z2_resumed_compiled", 2, True,
                                  f"checkpoint.resume={out}/z2_eager/checkpoints/step00000010"))
            remove_checkpoints(out, "z2_eager")
    if dist.get_rank() == 0:
        with open(f"{out}/report.json", "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
