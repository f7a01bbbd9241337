"""Training metrics: RUN/metrics.jsonl (one JSON line per log step) + tensorboard scalars + a one-line
live status on rank 0 + RUN/loss.png at the end.

Every rank calls `log` at the same steps (samples/s per rank is gathered from all of them).
"""
import json
import os
import resource
import sys
import time
from typing import Dict, Optional

import torch
import torch.distributed as dist

# Dense bf16 tensor-core peak FLOP/s per GPU (vendor datasheets, SXM parts); MFU is omitted elsewhere.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def _transformer_fwd_flops(tokens: int, width: int, layers: int, mlp_ratio: float) -> float:
    # per layer: qkv + out projections (4 w^2) + MLP (2 r w^2) multiply-adds per token, and the
    # T x T attention scores + weighted sum (2 T w per token); x2 FLOPs per multiply-add.
    per_layer = 2 * tokens * (4 + 2 * mlp_ratio) * width ** 2 + 4 * tokens ** 2 * width
    return layers * per_layer


def flops_per_sample(model_cfg: dict) -> Optional[float]:
    """Training FLOPs (fwd + bwd = 3x fwd) of one image-text pair, for open_clip ViT + text transformer
    configs; None for towers we do not model (timm, HF)."""
    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    if "timm_model_name" in v or "hf_model_name" in t or "layers" not in v or isinstance(v["layers"], (list, tuple)):
        return None
    size = v.get("image_size", 224)
    size = size if isinstance(size, int) else size[0]
    patches = (size // v["patch_size"]) ** 2
    vision = _transformer_fwd_flops(patches + 1, v["width"], v["layers"], v.get("mlp_ratio", 4.0))
    vision += 2 * patches * 3 * v["patch_size"] ** 2 * v["width"]
    text = _transformer_fwd_flops(t.get("context_length", 77), t.get("width", 512), t.get("layers", 12),
                                  t.get("mlp_ratio", 4.0))
    return 3 * (vision + text)


def peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for key, f in PEAK_BF16_FLOPS.items() if key in name), None)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class MetricsLogger:
    def __init__(self, run_dir: str, rank: int, world_size: int, device: torch.device, model_cfg: dict):
        self.run_dir, self.rank, self.world, self.device = run_dir, rank, world_size, device
        self.flops = flops_per_sample(model_cfg)
        self.peak = peak_flops(device)
        self.writer = None
        self.jsonl = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            self.jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a")
        self.tty = sys.stdout.isatty()
        self.reset_interval()

    def reset_interval(self) -> None:
        self.t0, self.data_s, self.samples = time.perf_counter(), 0.0, 0

    def add(self, samples: int, data_wait_s: float) -> None:
        self.samples += samples
        self.data_s += data_wait_s

    def log(self, step: int, scalars: Dict[str, float], counters: Dict[str, int]) -> Optional[dict]:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        local = torch.tensor([self.samples / elapsed], dtype=torch.float64, device=self.device)
        per_rank = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(per_rank, local)
        per_rank = [x.item() for x in per_rank]
        row = dict(step=step, **scalars, samples_per_s=sum(per_rank), samples_per_s_per_rank=per_rank,
                   data_wait_fraction=self.data_s / elapsed, peak_memory_bytes=peak_memory_bytes(self.device),
                   skipped_samples=dict(counters), time=time.time())
        if self.flops is not None and self.peak is not None:
            row["mfu"] = sum(per_rank) * self.flops / (self.peak * self.world)
        self.reset_interval()
        if self.rank != 0:
            return None
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for key, value in row.items():
            if isinstance(value, (int, float)) and value is not None and key not in ("step", "time"):
                self.writer.add_scalar(f"train/{key}", value, step)
        for reason, count in counters.items():
            self.writer.add_scalar(f"data/skipped_{reason}", count, step)
        self._status(row)
        return row

    def _status(self, row: dict) -> None:
        grad = row.get("grad_norm")
        line = (f"step {row['step']:>7} | loss {row['loss']:.4f} | lr {row['lr']:.2e} | scale {row['logit_scale']:.2f}"
                f" | grad {grad if grad is None else f'{grad:.3f}'} | {row['samples_per_s']:.1f} samples/s"
                f" | data wait {100 * row['data_wait_fraction']:.0f}% | mem {row['peak_memory_bytes'] / 2 ** 30:.2f} GiB"
                + (f" | MFU {100 * row['mfu']:.1f}%" if "mfu" in row else ""))
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

    def close(self) -> None:
        if self.rank != 0:
            return
        if self.tty:
            print()
        self.writer.close()
        self.jsonl.close()
        plot_loss(self.run_dir)


def _eval_rows(run_dir: str) -> list:
    folder = os.path.join(run_dir, "eval")
    rows = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                row = json.load(f)
            rows.append((row["step"], row["metrics"]))
    return rows


def plot_loss(run_dir: str) -> Optional[str]:
    """RUN/loss.png: the train loss curve from metrics.jsonl, val recall@1 from RUN/eval/ when present."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    evals = _eval_rows(run_dir)
    if evals:
        recall = ax.twinx()
        for key in sorted({k for _, m in evals for k in m if k.endswith("recall@1")}):
            recall.plot([s for s, _ in evals], [m.get(key) for _, m in evals], "o--", label=key)
        recall.set_ylabel("recall@1 (val)")
        recall.legend(loc="upper right")
    out = os.path.join(run_dir, "loss.png")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
