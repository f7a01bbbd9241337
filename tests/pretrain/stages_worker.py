"""Runs for tests/pretrain/test_stages_dist.py: a run in two stages on real DeepSpeed (ZeRO-3, 2 gloo ranks) over
the real shards in OUT/shards, uninterrupted and killed by a real SIGTERM in either stage, then resumed in new
processes:

    torchrun --nproc_per_node=2 stages_worker.py cut OUT      # full (6 steps); cut1 (SIGTERM in step 2); cut2 (step 4)
    torchrun --nproc_per_node=2 stages_worker.py resume OUT   # cut1 and cut2 resumed from their latest checkpoint

Stages (STAGES): 3 steps at 32 px, 16 tokens and patch dropout 0.5, then 3 at 48 px and tiny-vit's 32 tokens
(the model is built at 48 px: a 3 x 3 grid). Rank 0 writes OUT/<mode>.codes (exit codes) and OUT/<run>.<mode>.json:
per step the batch's image size, token length and keys, and the vision transformer's sequence length.
"""
import json
import os
import signal
import sys

import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))

from ds_worker import TINY  # noqa: E402

from clipforge.modeling.config import load_config  # noqa: E402
from clipforge.pretrain.run import run, stream_loader  # noqa: E402

STAGES = "train.stages=[{steps: 3, image_size: 32, context_length: 16, patch_dropout: 0.5}, {steps: 3, image_size: 48}]"


class RecordingLoader:
    """The real loader, noting what each batch it yields holds (the rest is the loader's own)."""

    def __init__(self, loader, record: dict):
        self._loader, self._record = loader, record

    def __iter__(self):
        for batch in self._loader:
            self._record["images"].append(int(batch["images"].shape[-1]))
            self._record["tokens"].append(int(batch["tokens"].shape[-1]))
            self._record["keys"].append(list(batch["keys"]))
            yield batch

    def __getattr__(self, name):
        return getattr(self._loader, name)


def recording_factory(record: dict):
    def factory(cfg, info, bundle, state):
        visual = bundle.clip.visual.transformer
        if not getattr(visual, "_recorded", False):  # once per run: the factory is called again at each stage
            visual._recorded = True
            visual.register_forward_pre_hook(
                lambda module, args: record["vision_tokens"].append(int(args[0].shape[1])) if module.training else None)
        return RecordingLoader(stream_loader(cfg, info, bundle, state), record)
    return factory


def sigterm_at(step: int):
    """Loss hook: rank 0 receives a real SIGTERM during the given step (the handler only sets a flag)."""
    def wrap(loss_fn):
        calls = {"n": 0}

        def fn(*args, **kwargs):  # the real loader's batches bring sample ids: keyword arguments of the loss
            calls["n"] += 1
            if calls["n"] == step and dist.get_rank() == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            return loss_fn(*args, **kwargs)
        return fn
    return wrap


def one_run(out: str, name: str, mode: str, *extra, loss_wrapper=None) -> int:
    cfg = load_config(None, [f"model.name={TINY}", f"data.sources=[{{path: '{out}/shards'}}]", "data.workers=1",
                             "train.steps=6", STAGES, "train.global_batch_size=8", "train.log_every=1",
                             f"train.run_dir={out}/{name}", "train.device=cpu", "deepspeed.zero_stage=3",
                             "deepspeed.precision=fp32", "optim.warmup_steps=1", "checkpoint.every_steps=1000",
                             "checkpoint.keep_last=1", "checkpoint.elastic=false", *extra])
    record = {"images": [], "tokens": [], "keys": [], "vision_tokens": []}
    code = run(cfg, recording_factory(record), loss_wrapper)
    if dist.get_rank() == 0:
        with open(f"{out}/{name}.{mode}.json", "w") as f:
            json.dump(record, f)
    return code


def main(mode: str, out: str) -> None:
    if mode == "cut":
        codes = {"full": one_run(out, "full", mode),
                 "cut1": one_run(out, "cut1", mode, loss_wrapper=sigterm_at(2)),
                 "cut2": one_run(out, "cut2", mode, loss_wrapper=sigterm_at(4))}
    else:
        codes = {name: one_run(out, name, mode, "checkpoint.resume=latest") for name in ("cut1", "cut2")}
    if dist.get_rank() == 0:
        with open(f"{out}/{mode}.codes", "w") as f:
            f.write(repr(codes))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
