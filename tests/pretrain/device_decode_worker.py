"""Runs for tests/pretrain/test_device_decode_train.py: one 3-step run on real DeepSpeed (ZeRO-0, 2 gloo ranks) over
the real shards in OUT/shards, twice: data.decode=cpu, then data.decode=gpu with train.device=auto, which on this
CPU-only machine trains on the CPU, so the device path runs there (torchvision's CPU decoder in nvjpeg's place):

    torchrun --nproc_per_node=2 device_decode_worker.py OUT

Each rank writes OUT/<decode>.rank<r>.npz: per step the keys and the uint8 images the train loop took from the loader
(on the device the loader decoded them to), and the device's type; rank 0 writes OUT/codes.json (exit codes).
"""
import json
import os
import sys

import numpy as np
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))

from ds_worker import TINY  # noqa: E402

from clipforge.modeling.config import load_config  # noqa: E402
from clipforge.pretrain.run import run, stream_loader  # noqa: E402


class RecordingLoader:
    """The real loader, noting the keys and images of each batch it yields (the rest is the loader's own)."""

    def __init__(self, loader, record: dict):
        self._loader, self._record = loader, record

    def __iter__(self):
        for batch in self._loader:
            self._record["keys"].append(list(batch["keys"]))
            self._record["images"].append(batch["images"].cpu().numpy())
            self._record["device"] = batch["images"].device.type
            yield batch

    def __getattr__(self, name):
        return getattr(self._loader, name)


def one_run(out: str, decode: str) -> int:
    cfg = load_config(None, [f"model.name={TINY}", f"data.sources=[{{path: '{out}/shards'}}]", "data.workers=1",
                             "data.hflip=true", f"data.decode={decode}", "train.steps=3", "train.global_batch_size=8",
                             "train.log_every=1", f"train.run_dir={out}/{decode}", "train.device=auto",
                             "deepspeed.zero_stage=0", "deepspeed.precision=fp32", "optim.warmup_steps=1",
                             "checkpoint.every_steps=1000", "checkpoint.export_at_end=false", "checkpoint.keep_last=1",
                             "checkpoint.elastic=false"])
    record = {"keys": [], "images": [], "device": None}
    code = run(cfg, lambda c, info, bundle, state: RecordingLoader(stream_loader(c, info, bundle, state), record))
    np.savez(f"{out}/{decode}.rank{dist.get_rank()}.npz", keys=np.array(record["keys"]),
             images=np.stack(record["images"]), device=record["device"])
    return code


def main(out: str) -> None:
    codes = {decode: one_run(out, decode) for decode in ("cpu", "gpu")}
    if dist.get_rank() == 0:
        with open(f"{out}/codes.json", "w") as f:
            json.dump(codes, f)


if __name__ == "__main__":
    main(sys.argv[1])
