"""The contrastive loss alone at growing batch B: clipforge's tiled InfoNCE vs the naive loss.

The peer is open_clip's ClipLoss (materialises the B×B logits twice, ~16·B² bytes with grads).
Each (impl, B) is one forward + backward on fp32 unit-norm features [B, d] already on the device;
memory is the peak above what the inputs hold (CUDA allocator peak; on CPU the RSS high-water mark).
An impl that runs out of memory at some B is recorded as OOM there and not tried at larger B.
"""
import gc
import time
from typing import Callable, Dict, List

import torch

from bench.common import PeakRSS, markdown_table


def naive_loss() -> Callable:
    from open_clip.loss import ClipLoss
    return ClipLoss()


def tiled_loss(tile: int) -> Callable:
    """clipforge's tiled InfoNCE exactly as the trainer builds it (loss.impl=tiled)."""
    from clipforge.modeling.config import LossConfig
    from clipforge.pretrain.loss import build_loss
    return build_loss(LossConfig(impl="tiled", tile_size=tile), rank=0, world_size=1)


def _one(fn: Callable, B: int, d: int, device: torch.device, repeat: int) -> Dict:
    g = torch.Generator(device="cpu").manual_seed(B)
    img = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1).to(device)
    txt = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1).to(device)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    scale = torch.tensor(100.0, device=device, requires_grad=True)
    cuda = device.type == "cuda"
    times, extra = [], 0
    for _ in range(repeat):
        img.grad = txt.grad = scale.grad = None
        gc.collect()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            fn(img, txt, scale).backward()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        extra = max(extra, torch.cuda.max_memory_allocated(device) - base if cuda else mem.extra)
    return {"s": min(times), "extra_bytes": extra}


def loss_figures(sizes: List[int], d: int, device: torch.device, tile: int) -> List[Dict]:
    impls = {"naive": naive_loss(), "tiled": tiled_loss(tile)}
    dead = set()
    rows = []
    for B in sizes:
        row = {"B": B, "d": d}
        for name, fn in impls.items():
            if name in dead:
                row[f"{name}_s"] = None
                row[f"{name}_status"] = "OOM at smaller B"
                continue
            try:
                r = _one(fn, B, d, device, repeat=3 if B <= 1 << 16 else 1)
                row[f"{name}_s"], row[f"{name}_extra_bytes"] = r["s"], r["extra_bytes"]
                row[f"{name}_status"] = "ok"
            except (torch.OutOfMemoryError, RuntimeError, MemoryError) as err:
                if not isinstance(err, MemoryError) and "out of memory" not in str(err).lower():
                    raise
                dead.add(name)
                row[f"{name}_s"], row[f"{name}_status"] = None, "OOM"
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        rows.append(row)
    return rows


def loss_rows_markdown(rows: List[Dict]) -> str:
    def mem(r, name):
        b = r.get(f"{name}_extra_bytes")
        return None if b is None else b / 2**30

    def cell(r, name):
        return r[f"{name}_s"] if r[f"{name}_s"] is not None else r[f"{name}_status"]

    table = [[r["B"], cell(r, "tiled"), mem(r, "tiled"), cell(r, "naive"), mem(r, "naive"),
              (f"{r['naive_s'] / r['tiled_s']:.2f}×" if r.get("tiled_s") and r.get("naive_s") else None)]
             for r in rows]
    return markdown_table(["B", "tiled s", "tiled extra GiB", "naive s", "naive extra GiB",
                           "naive/tiled time"], table)
