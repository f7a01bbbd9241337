"""Contrastive-loss memory and time on one CPU process: clipforge's tiled InfoNCE vs the naive loss.

    python -m bench.loss [--quick]

Rows (bench/run_all.py puts them in BENCHMARKS.md):
  1. time of one forward + backward at B=4,096, d=512 (quick: B=1,024): tiled (loss.impl=tiled,
     default loss.tile_size) vs the naive loss as open_clip computes it (`open_clip.loss.ClipLoss`;
     clipforge's own loss.impl=naive is in the notes). Best of 3 (quick: of 1) after one warm-up.
  2. peak extra memory of one tiled forward + backward at B=65,536, d=512 (quick: B=8,192) vs what
     the naive loss would need there. The naive loss cannot run at B=65,536 on this machine: its
     requirement is projected from its own measured extra memory at B=4,096 (bytes per B^2, the
     logits and their softmax/gradient copies), and compared with the B^2 formula.
How memory is measured: each measured step runs in a fresh process (`--child-memory IMPL B`) under
bench.common.PeakRSS -- the kernel's RSS high-water mark (VmHWM) is reset through
/proc/self/clear_refs before the call and read after it, so the peak is exact (no sampling);
"extra" = peak minus the RSS at entry, after the input features [B, d] exist. It includes
everything the call allocates: the feature gradients (2 x B x d floats), the logit blocks, torch's
and the allocator's own slack. Single thread (OMP_NUM_THREADS=1, as run_all sets).
"""
import json
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from bench.common import PeakRSS, cli, result
from clipforge.modeling.config import LossConfig
from clipforge.pretrain.loss import build_loss

D = 512
GIB = 2**30


def _inputs(batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, D, generator=g), dim=1).requires_grad_()
    text = F.normalize(torch.randn(batch, D, generator=g), dim=1).requires_grad_()
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    return image, text, scale


def _step(fn: Callable, image, text, scale) -> None:
    image.grad = text.grad = scale.grad = None
    fn(image, text, scale).backward()


def _best_time(fn: Callable, batch: int, repeat: int) -> float:
    image, text, scale = _inputs(batch, seed=0)
    _step(fn, image, text, scale)  # warm-up (allocator, thread pools)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        _step(fn, image, text, scale)
        times.append(time.perf_counter() - t0)
    return min(times)


def _loss(impl: str) -> Callable:
    return build_loss(LossConfig(impl=impl), rank=0, world_size=1)


def _measure_here(impl: str, batch: int) -> Dict[str, float]:
    """Child side: one forward+backward under PeakRSS, in a process that has done nothing else."""
    image, text, scale = _inputs(batch, seed=1)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        _step(_loss(impl), image, text, scale)
    return {"extra": mem.extra, "seconds": time.perf_counter() - t0}


def _peak_extra(impl: str, batch: int) -> Dict[str, float]:
    """Peak extra RSS of one step, measured in a fresh process: in this one, memory freed by the
    timing runs stays mapped in the allocator and would hide the peak (the RSS would not grow)."""
    cmd = [sys.executable, "-m", "bench.loss", "--child-memory", impl, str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(quick: bool) -> List[Dict]:
    from open_clip.loss import ClipLoss

    tile = LossConfig().tile_size
    tiled, naive = _loss("tiled"), _loss("naive")
    peer = ClipLoss()
    time_b, mem_b, repeat = (1024, 8192, 1) if quick else (4096, 65536, 3)
    threads = torch.get_num_threads()

    t_tiled = _best_time(tiled, time_b, repeat)
    t_peer = _best_time(peer, time_b, repeat)
    t_naive = _best_time(naive, time_b, repeat)
    time_row = result(
        "loss-time", "open_clip ClipLoss (naive B x B logits)",
        f"tiled InfoNCE: s per forward+backward, B={time_b:,}, d={D}", t_tiled, t_peer,
        higher_is_better=False,
        notes=(f"tiled/naive time = {t_tiled / t_peer:.2f}x (target <= 1.3x); clipforge loss.impl=naive "
               f"{t_naive:.3f} s; tile_size={tile}; best of {repeat}; {threads} thread(s)"))

    # The naive loss's own memory at a size it can run, as bytes per B^2, projects its need at mem_b.
    naive_small = _peak_extra("naive", time_b)
    per_b2 = naive_small["extra"] / time_b**2
    projected = per_b2 * mem_b**2
    run_tiled = _peak_extra("tiled", mem_b)
    feature_grads = 2 * mem_b * D * 4
    mem_row = result(
        "loss-memory", "naive InfoNCE (projected from its bytes per B^2)",
        f"tiled InfoNCE: peak extra GiB, forward+backward, B={mem_b:,}, d={D}",
        run_tiled["extra"] / GIB, projected / GIB,
        higher_is_better=False,
        notes=(f"tiled measured (exact RSS high-water mark, PeakRSS) in {run_tiled['seconds']:.0f} s, "
               f"{feature_grads / GIB:.2f} GiB of it the feature gradients; target < 1 GB; "
               f"clipforge's naive measured {naive_small['extra'] / GIB:.2f} GiB at B={time_b:,} = "
               f"{per_b2:.1f} bytes/B^2, x B^2 "
               f"(open_clip's ~16 bytes/B^2 -> {16 * mem_b**2 / GIB:.0f} GiB)"))
    return [time_row, mem_row]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child-memory"]:
        print(json.dumps(_measure_here(sys.argv[2], int(sys.argv[3]))))
        raise SystemExit(0)
    raise SystemExit(cli(run))
