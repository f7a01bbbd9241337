"""Runs several tiny single-process trainings (a world of one, real DeepSpeed on gloo) in ONE child process,
for the tests of the training options (tests/pretrain/test_train_options.py, test_run_length.py,
test_checkpoint_every_minutes.py). In a child, not in pytest's own process: pretrain.run.run starts a process
group and sets RANK/WORLD_SIZE in os.environ, which must not leak into other tests.

    python tiny_runs.py SPEC.json
    torchrun --standalone --nproc_per_node=2 tiny_runs.py SPEC.json    # every rank runs them; rank 0 writes the reports

SPEC: {"out": DIR, "runs": [{"name": str, "overrides": [dotted.key=value, ...],
                             "data": "synthetic" (tests/pretrain/synthetic.py) | "stream" (the real loader),
                             "clock_s_per_step": seconds (optional: pretrain.checkpoint's clock is a fake one
                                                 that advances this much per loss call, i.e. per step),
                             "damage": [{"file": path under DIR, "how": "flip" (one byte, mid-file) | "truncate"
                                         (to half)}] (optional: done to existing files before the run),
                             "enospc_at_write": k (optional: the k-th torch.save into a checkpoint being written
                                                writes half its bytes, then raises OSError ENOSPC),
                             "nan_at_calls": [n, ...] (optional: those loss calls, counted from 1, return NaN),
                             "drop_checkpoints": true (optional: the run's checkpoints are deleted after it, so that
                                                 many runs do not fill a small disk)}]}
Each run writes DIR/<name>/ (metrics.jsonl, checkpoints/, ...) and DIR/<name>.json: exit code, the number of
open_clip activation-checkpoint calls, and the sequence lengths the vision transformer saw in training mode.
"""
import json
import os
import shutil
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import open_clip.transformer  # noqa: E402
import torch  # noqa: E402

from clipforge.pretrain import checkpoint as checkpoint_module  # noqa: E402
from clipforge.modeling.config import load_config  # noqa: E402
from clipforge.pretrain.run import run, stream_loader  # noqa: E402
from storage_faults import damage, failing_save  # noqa: E402
from synthetic import synthetic_factory  # noqa: E402

TINY = os.path.join(REPO, "configs", "models", "tiny-vit.json")


def base_overrides(run_dir: str) -> list:
    return [f"model.name={TINY}", "data.sources=[{path: synthetic}]", "train.global_batch_size=8",
            "train.log_every=1", f"train.run_dir={run_dir}", "train.device=cpu", "deepspeed.zero_stage=0",
            "deepspeed.precision=fp32", "optim.warmup_steps=1", "optim.lr=1e-3", "checkpoint.every_steps=1000",
            "checkpoint.every_minutes=0", "checkpoint.export_at_end=false"]


def one_run(out: str, spec: dict) -> dict:
    run_dir = os.path.join(out, spec["name"])
    cfg = load_config(None, base_overrides(run_dir) + list(spec.get("overrides", [])))
    report = {"checkpoint_calls": 0, "vision_tokens": []}

    real_checkpoint = open_clip.transformer.checkpoint

    def counting_checkpoint(*args, **kwargs):
        report["checkpoint_calls"] += 1
        return real_checkpoint(*args, **kwargs)
    open_clip.transformer.checkpoint = counting_checkpoint

    clock = {"now": 1000.0}
    real_time = checkpoint_module.time
    step_s = spec.get("clock_s_per_step")
    if step_s is not None:
        checkpoint_module.time = types.SimpleNamespace(monotonic=lambda: clock["now"])

    calls = {"n": 0}

    def loss_wrapper(loss_fn):
        def fn(*args, **kwargs):
            calls["n"] += 1
            if step_s is not None:
                clock["now"] += step_s
            loss = loss_fn(*args, **kwargs)
            return loss * float("nan") if calls["n"] in spec.get("nan_at_calls", []) else loss
        return fn

    real_forward = open_clip.transformer.Transformer.forward

    def recording_forward(self, x, *args, **kwargs):
        if self.training and self.__dict__.get("_is_visual"):
            report["vision_tokens"].append(int(x.shape[1]))  # batch_first: [batch, tokens, width]
        return real_forward(self, x, *args, **kwargs)
    open_clip.transformer.Transformer.forward = recording_forward

    def marking_factory(cfg_, dist, bundle, state):
        bundle.model.clip.visual.transformer._is_visual = True
        factory = stream_loader if spec.get("data", "synthetic") == "stream" else synthetic_factory
        return factory(cfg_, dist, bundle, state)

    for item in spec.get("damage", []):
        damage(os.path.join(out, item["file"]), item["how"])
    real_save = torch.save
    if spec.get("enospc_at_write") is not None:
        torch.save = failing_save(real_save, spec["enospc_at_write"])
    try:
        report["code"] = run(cfg, data_factory=marking_factory, loss_wrapper=loss_wrapper)
    finally:
        torch.save = real_save
        open_clip.transformer.checkpoint = real_checkpoint
        open_clip.transformer.Transformer.forward = real_forward
        checkpoint_module.time = real_time
    if spec.get("drop_checkpoints") and os.environ.get("RANK", "0") == "0":
        shutil.rmtree(os.path.join(run_dir, "checkpoints"))
    return report


def main(spec_file: str) -> None:
    with open(spec_file) as f:
        spec = json.load(f)
    for one in spec["runs"]:
        report = one_run(spec["out"], one)
        if os.environ.get("RANK", "0") == "0":
            with open(os.path.join(spec["out"], one["name"] + ".json"), "w") as f:
                json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
