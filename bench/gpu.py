"""GPU figures: bf16 training steps at the largest batch that fits, and the loss alone up to 1M.

    python -m bench.gpu            # on a CUDA machine: measures, rewrites BENCHMARKS.md's GPU section
    python -m bench.gpu --quick    # without CUDA: the same code on a tiny model on CPU (logic check)

Training (ViT-B/32, ViT-L/14): one step = clipforge's model (modeling.model.build_model) forward in
bf16 autocast, clipforge's loss (pretrain.loss, config defaults), backward, torch fused AdamW (fp32
master weights) on one device, synthetic data in device memory. Not the DeepSpeed engine: its
ZeRO bookkeeping does not survive the out-of-memory probes of the batch search.
Reported: samples/s, MFU = model FLOPs per sample (modeling/flops.py, 3x forward) x samples/s over the
device's bf16 matmul peak MEASURED here with a large matmul, peak memory, and the data-wait
fraction (time to fetch the next batch / step time: ~0 by construction with in-memory data; the
loader's own throughput is bench/loader.py's figure). Loss: forward + backward of the loss alone
on fp32 features, tiled (clipforge) vs naive (open_clip's ClipLoss, the peer) at growing B. Loader: the real train
loader's samples/s with data.decode=gpu and =cpu on one device, against the ViT-B/32 training row (bench/gpu_loader.py).
"""
import gc
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from bench.common import cli, markdown_table, result, with_section, write_atomic
from bench.gpu_loader import default_workers, loader_figures, loader_markdown
from bench.gpu_loss import loss_figures, loss_rows_markdown
from clipforge.modeling.flops import clip_flops

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "models" / "tiny-vit.json")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def matmul_peak(device: torch.device, n: int, dtype=torch.bfloat16, reps: int = 20) -> float:
    """Measured matmul FLOP/s: best of `reps` n×n×n products after warm-up (random data)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def largest_batch(fits: Callable[[int], bool], start: int, limit: int, granularity: int) -> int:
    """Largest b (multiple of granularity, <= limit) with fits(b), assuming fits is monotone:
    double from `start` until a failure or the limit, then bisect. 0 if `start` does not fit."""
    if not fits(start):
        return 0
    lo, hi = start, None
    while hi is None:
        nxt = min(lo * 2, limit)
        if nxt == lo:
            return lo
        if fits(nxt):
            lo = nxt
        else:
            hi = nxt
    while hi - lo > granularity:
        mid = (lo + hi) // 2 // granularity * granularity
        if mid <= lo:
            break
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


class TrainBench:
    """One model, optimizer and loss on one device; `step(b)` runs a full training step."""

    def __init__(self, name: str, device: torch.device):
        from clipforge.modeling.config import LossConfig, ModelConfig
        from clipforge.pretrain.loss import build_loss
        from clipforge.modeling.model import build_model
        loss_cfg = LossConfig()
        bundle = build_model(ModelConfig(name=name), loss_cfg)   # the model the trainer trains
        self.cfg, self.device = bundle.model_cfg, device
        self.model = bundle.model.to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=device.type == "cuda")
        self.loss_fn = build_loss(loss_cfg, rank=0, world_size=1)
        self.loss_label = f"clipforge {loss_cfg.kind} (impl={loss_cfg.impl})"
        pre = bundle.preprocess_cfg
        self.mean = torch.tensor(pre["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre["std"], device=device).view(1, 3, 1, 1)
        self.image_shape = (3, bundle.image_size, bundle.image_size)
        self.context = self.cfg["text_cfg"].get("context_length", 77)
        self.vocab = self.cfg["text_cfg"].get("vocab_size", 49408)
        self._data: Dict[int, List] = {}

    def data(self, b: int) -> List:
        """Two synthetic batches resident on the device (uint8 pixels normalised on device)."""
        if b not in self._data:
            self._data.clear()
            free_memory(self.device)
            torch.manual_seed(b)  # generated on the device: 10 GB of pixels at b=65k is slow on CPU
            self._data[b] = [(torch.randint(0, 256, (b, *self.image_shape), dtype=torch.uint8,
                                            device=self.device),
                              torch.randint(1, self.vocab, (b, self.context), device=self.device))
                             for _ in range(2)]
        return self._data[b]

    def step(self, images_u8: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # uint8 -> normalised on the device, as the trainer does (4x less to copy than fp32)
        images = (images_u8.float().div_(255.0) - self.mean) / self.std
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            image, text, scale, bias = self.model(images, tokens)
            loss = self.loss_fn(image, text, scale, bias)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def fits(self, b: int) -> bool:
        try:
            for imgs, toks in self.data(b):
                self.step(imgs, toks)
            sync(self.device)
            return True
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
        # outside the except block: the traceback (and the tensors its frames hold) is gone
        self.opt.zero_grad(set_to_none=True)
        self._data.clear()
        free_memory(self.device)
        return False

    def measure(self, b: int, steps: int, warmup: int) -> Dict[str, float]:
        batches = self.data(b)
        for i in range(warmup):
            self.step(*batches[i % 2])
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        fetch = 0.0
        t0 = time.perf_counter()
        for i in range(steps):
            f0 = time.perf_counter()
            imgs, toks = batches[i % 2]       # the "loader": in-memory, so ~0 s by construction
            fetch += time.perf_counter() - f0
            loss = self.step(imgs, toks)
        sync(self.device)
        elapsed = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return {"samples_per_s": b * steps / elapsed, "step_s": elapsed / steps,
                "data_wait_fraction": fetch / elapsed, "peak_mem_bytes": peak,
                "final_loss": float(loss.detach())}


def train_figures(name: str, device: torch.device, peak_flops: float, quick: bool) -> Dict:
    bench = TrainBench(name if device.type == "cuda" else TINY, device)
    cfg = bench.cfg
    if device.type == "cuda":
        batch = largest_batch(bench.fits, start=64, limit=1 << 16, granularity=64)
    else:  # a CPU never runs out of memory here; cap the search to keep the check short
        batch = largest_batch(bench.fits, start=8, limit=16 if quick else 64, granularity=8)
    m = None
    while batch > 0 and m is None:   # the bisection's edge can fail by fragmentation: back off 10%
        try:
            m = bench.measure(batch, steps=3 if quick else 10, warmup=1 if quick else 3)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
        if m is None:
            bench.opt.zero_grad(set_to_none=True)
            free_memory(device)
            batch = int(batch * 0.9) // 8 * 8
    if m is None:
        raise RuntimeError(f"{name}: not even the smallest batch of the search fits on {device}")
    flops = clip_flops(cfg)
    m.update(model=name if device.type == "cuda" else "tiny-vit", batch=batch,
             train_flops_per_sample=flops["train"], loss=bench.loss_label,
             mfu=flops["train"] * m["samples_per_s"] / peak_flops,
             params=sum(p.numel() for p in bench.model.parameters()))
    del bench
    free_memory(device)
    return m


def device_info(device: torch.device) -> Dict[str, str]:
    info = {"torch": torch.__version__, "device": "CPU (no CUDA)"}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(device=f"{p.name}, {p.total_memory / 2**30:.0f} GiB", cuda=torch.version.cuda)
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = "unknown"
    return info


def render(m: Dict) -> str:
    """The GPU section of BENCHMARKS.md."""
    info, peak, trains, losses, date = m["info"], m["peak"], m["train"], m["loss"], m["date"]
    loaders = m["loader"]
    head = (f"Measured by `python -m bench.gpu` on {info['device']}, driver {info.get('driver', '—')}, "
            f"torch {info['torch']} (CUDA {info.get('cuda', '—')}), {date}. bf16 matmul peak measured "
            f"here: {peak / 1e12:.1f} TFLOP/s (8192³ product).\n\n")
    rows = [[t["model"], t["batch"], t["samples_per_s"], t["step_s"] * 1e3,
             f"{100 * t['mfu']:.1f}%", t["peak_mem_bytes"] / 2**30 if t["peak_mem_bytes"] else None,
             f"{100 * t['data_wait_fraction']:.3f}%", t["loss"]] for t in trains]
    return (head + "Training step (clipforge model + loss, bf16 autocast, torch fused AdamW, not DeepSpeed; "
            "one GPU, synthetic in-memory data: "
            "the data-wait fraction is ~0 by construction):\n\n"
            + markdown_table(["model", "largest batch", "samples/s", "step ms", "MFU",
                              "peak GiB", "data wait", "loss"], rows)
            + f"\nLoss alone (fp32 features, d={losses[0]['d']}, forward + backward, TF32 matmuls; tiled = "
              "clipforge loss.impl=tiled, tile 8192; naive = open_clip ClipLoss):\n\n"
            + loss_rows_markdown(losses)
            + f"\nTrain loader (256 x 341 JPEGs q95 -> 224-px crops, tokens, {loaders[0]['workers']} worker processes; "
              "data.decode=gpu decodes on this device, =cpu copies the workers' pinned pixels here):\n\n"
            + loader_markdown(loaders, trains[0]["samples_per_s"]))


def measure(quick: bool) -> Dict:
    """All figures on this machine: CUDA if present, else the tiny-model CPU logic check."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    if cuda:
        peak = matmul_peak(device, 8192, reps=20)
    else:  # a CPU without native bf16 (AVX2 only) emulates it ~10x slower than fp32, and autocast keeps
        # much of the step in fp32: the peak that bounds the step is the faster of the two matmuls
        peak = max(matmul_peak(device, 512, dtype, reps=3) for dtype in (torch.bfloat16, torch.float32))
    models = ["ViT-B-32"] if (quick or not cuda) else ["ViT-B-32", "ViT-L-14"]
    trains = [train_figures(name, device, peak, quick) for name in models]
    sizes = ([1 << k for k in range(14, 21)] if cuda and not quick
             else [1 << 14, 1 << 16] if cuda else [256, 1024])
    # tile 8192 on a GPU: 3 fp32 blocks = 0.8 GB, and 16k blocks (not 65k) at B=1M
    losses = loss_figures(sizes, 512 if cuda else 64, device, tile=8192 if cuda else 256)
    images, batch, workers = ((1024 if quick else 4096), 256, default_workers()) if cuda else (96, 32, 1)
    loaders = loader_figures(device, sync, images, batch, workers)
    return {"cuda": cuda, "info": device_info(device), "peak": peak, "train": trains, "loss": losses,
            "loader": loaders, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def rows(m: Dict) -> List[Dict]:
    """Rows for BENCHMARKS.md's main table."""
    label = "" if m["cuda"] else " (CPU logic check, not a GPU figure)"
    out = [result("gpu-train", "none (absolute figure)",
                  f"{t['model']} bf16 train samples/s at batch {t['batch']}{label}",
                  t["samples_per_s"], None, f"MFU {100 * t['mfu']:.1f}%; loss: {t['loss']}")
           for t in m["train"]]
    both = [r for r in m["loss"] if r.get("tiled_s") and r.get("naive_s")]
    if both:
        r = both[-1]
        out.append(result("gpu-loss", "open_clip ClipLoss (naive)",
                          f"loss fwd+bwd seconds at B={r['B']}{label}", r["tiled_s"], r["naive_s"],
                          f"largest B both ran; tiled ran up to B={max(x['B'] for x in m['loss'] if x.get('tiled_s'))}",
                          higher_is_better=False))
    by_decode = {r["decode"]: r for r in m["loader"]}
    trainer = m["train"][0]
    gpu_decode = by_decode["gpu"]["samples_per_s"]
    out.append(result("gpu-loader", "the same loader, data.decode=cpu",
                      f"loader samples/s per GPU, data.decode=gpu, {by_decode['gpu']['workers']} workers{label}",
                      gpu_decode, by_decode["cpu"]["samples_per_s"],
                      f"trainer {trainer['model']} {trainer['samples_per_s']:,.0f} samples/s: goal loader >= trainer "
                      + ("met" if gpu_decode >= trainer["samples_per_s"] else "not met")))
    return out


def run(quick: bool) -> List[Dict]:
    m = measure(quick)
    if m["cuda"]:  # GPU figures go into their own section; CPU logic checks never do
        target = Path(os.environ.get("CLIPFORGE_BENCHMARKS", REPO / "BENCHMARKS.md"))
        text = target.read_text() if target.is_file() else "# clipforge benchmarks\n"
        write_atomic(str(target), with_section(text, "gpu", render(m)))
        print(json.dumps(m, default=str))
    return rows(m)


if __name__ == "__main__":
    raise SystemExit(cli(run))
