"""open_clip_train's own `main`, as one of several torchrun ranks on CPU (gloo).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m -- bench.peer_ddp [open_clip_train args]

(`--` ends torchrun's own options: its parser would take `--logs` for an abbreviation of `--logs-specs`.)

open_clip_train 3.3.0 wraps the model as `DistributedDataParallel(model, device_ids=[device])`; torch refuses
`device_ids` for a CPU module (ValueError: "device_ids ... only work with ... GPU modules"), so its
multi-process mode cannot start on CPU. This drops `device_ids` when they name the CPU - the one change;
data, model, loss and optimizer are open_clip_train's own. bench.learning runs the peer this way so it gets
the same 2 CPU ranks as clipforge (one process with OMP_NUM_THREADS=1 would use one core of the two).
"""
import runpy
import sys

import torch

_DistributedDataParallel = torch.nn.parallel.DistributedDataParallel


class CpuDistributedDataParallel(_DistributedDataParallel):
    def __init__(self, module, device_ids=None, **kwargs):
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids=device_ids, **kwargs)


if __name__ == "__main__":
    torch.nn.parallel.DistributedDataParallel = CpuDistributedDataParallel
    sys.argv[0] = "open_clip_train.main"
    runpy.run_module("open_clip_train.main", run_name="__main__", alter_sys=True)
