"""Training metrics: RUN/metrics.jsonl (one JSON line per log step, and an event row -- {"event": "rollback",
...}, no loss -- per rollback) + tensorboard scalars + a one-line live status on rank 0 + RUN/loss.png at the end.

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

from clipforge.modeling.eval_results import periodic_eval
from clipforge.modeling import flops as flop_model  # module attribute: tests patch its peak table lookup


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _metric_order(key: str):
    """recall@1, @5, @10 (not the string order @1, @10, @5); an aggregate without @k after its @k values."""
    name, _, k = key.rpartition("@")
    return (name, int(k)) if k.isdigit() else (key, float("inf"))


def eval_line(step: int, metrics: Dict[str, float], label: str = "eval") -> str:
    return f"{label} step {step}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in sorted(metrics, key=_metric_order))


class MetricsLogger:
    def __init__(self, run_dir: str, rank: int, world_size: int, device: torch.device, model_cfg: dict):
        self.run_dir, self.rank, self.world, self.device = run_dir, rank, world_size, device
        self.flops = flop_model.train_flops_per_sample(model_cfg)
        # The datasheet peak by device name ("cpu" and unlisted GPUs have none: MFU is then not reported).
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        self.peak = flop_model.peak_bf16_flops(name)
        self.writer = None
        self.jsonl = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            self.jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a")
        self.tty = sys.stdout.isatty()
        self.set_progress(total_steps=0, step=0, samples_seen=0, global_batch_size=0, steps_per_epoch=None)
        self.reset_interval()

    def set_progress(self, total_steps: int, step: int, samples_seen: int, global_batch_size: int,
                     steps_per_epoch: Optional[int]) -> None:
        """Where the run starts (a resumed run: its checkpoint's step and samples) and how long it is: the status
        line's N/total, epoch and ETA, and metrics.jsonl's samples_seen / epoch, come from these."""
        self.total, self.start_step, self.start_samples = total_steps, step, samples_seen
        self.batch, self.steps_per_epoch, self.started = global_batch_size, steps_per_epoch, time.perf_counter()

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
        # Every step consumes one global batch (run.py's samples_seen counts the same way).
        samples_seen = self.start_samples + (step - self.start_step) * self.batch
        row = dict(step=step, **scalars, samples_per_s=sum(per_rank), samples_per_s_per_rank=per_rank,
                   data_wait_fraction=self.data_s / elapsed, peak_memory_bytes=peak_memory_bytes(self.device),
                   skipped_samples=dict(counters), samples_seen=samples_seen,
                   epoch=step / self.steps_per_epoch if self.steps_per_epoch else None,
                   elapsed_s=time.perf_counter() - self.started, time=time.time())
        if self.flops is not None and self.peak is not None:
            row["mfu"] = sum(per_rank) * self.flops / (self.peak * self.world)
        self.reset_interval()
        if self.rank != 0:
            return None
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for key, value in row.items():
            if isinstance(value, (int, float)) and value is not None and key not in ("step", "time", "elapsed_s"):
                self.writer.add_scalar(f"train/{key}", value, step)
        for reason, count in counters.items():
            self.writer.add_scalar(f"data/skipped_{reason}", count, step)
        self._status(row)
        return row

    def event(self, row: dict) -> None:
        """An event row (rank 0 writes it; every rank may call)."""
        if self.rank == 0:
            self.jsonl.write(json.dumps(dict(row, time=time.time())) + "\n")
            self.jsonl.flush()

    def progress(self, row: dict) -> str:
        """'step 120/500 (24%) | epoch 1.20 | 2:01 elapsed, ETA 6:23': the ETA from this run's own pace."""
        step, done = row["step"], row["step"] - self.start_step
        text = f"step {step}/{self.total} ({100 * step / self.total:.0f}%)" if self.total else f"step {step}"
        if row["epoch"] is not None:
            text += f" | epoch {row['epoch']:.2f}"
        text += f" | {_duration(row['elapsed_s'])} elapsed"
        if self.total and done > 0:
            text += f", ETA {_duration(row['elapsed_s'] / done * max(self.total - step, 0))}"
        return text

    def _status(self, row: dict) -> None:
        grad = row.get("grad_norm")
        line = (f"{self.progress(row)} | loss {row['loss']:.4f} | lr {row['lr']:.2e} | scale {row['logit_scale']:.2f}"
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


def plot_loss(run_dir: str) -> Optional[str]:
    """RUN/loss.png (see loss_figure); None when there is nothing to draw."""
    import matplotlib.pyplot as plt

    fig = loss_figure(run_dir)
    if fig is None:
        return None
    out = os.path.join(run_dir, "loss.png")
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def loss_figure(run_dir: str):
    """Train loss and lr (left), dev recall@k of both directions with their chance levels (right, when RUN/eval/
    holds results). Legends sit below the axes, so no curve point is hidden behind them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "event" not in r]  # rollback events carry no loss
    if not rows:
        return None
    evals = periodic_eval(run_dir)
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(12 if evals else 7, 4.5), squeeze=False)
    loss_ax = axes[0][0]
    steps = [r["step"] for r in rows]
    handles = loss_ax.plot(steps, [r["loss"] for r in rows], color="C0", label="train loss")
    loss_ax.set(xlabel="step", ylabel="contrastive loss", title="training loss and learning rate")
    loss_ax.grid(alpha=0.3)
    if all("lr" in r for r in rows):
        lr_ax = loss_ax.twinx()
        handles += lr_ax.plot(steps, [r["lr"] for r in rows], color="C1", linestyle="--", label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    loss_ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    if evals:
        _plot_recall(axes[0][1], evals)
    fig.suptitle(f"{os.path.basename(os.path.abspath(run_dir))}: training")
    fig.tight_layout()
    return fig


def _plot_recall(ax, evals: list) -> None:
    """One colour per k, solid text->image, dashed image->text; the chance level of each as a dotted line."""
    keys = sorted({k for _, m, _ in evals for k in m if "retrieval_recall@" in k}, key=_metric_order)
    ks = sorted({int(k.rpartition("@")[2]) for k in keys})
    steps = [s for s, _, _ in evals]
    for key in keys:
        k = int(key.rpartition("@")[2])
        color = f"C{ks.index(k) % 10}"
        text_to_image = key.startswith("image_retrieval")
        ax.plot(steps, [100 * m[key] if key in m else float("nan") for _, m, _ in evals], "o-" if text_to_image
                else "s--", color=color, label=f"R@{k} {'text->image' if text_to_image else 'image->text'}")
        chance = [100 * c[key] for _, _, c in evals if key in c]
        if chance:
            ax.axhline(chance[-1], color=color, linestyle=":", linewidth=1,
                       label=f"chance R@{k} {'text->image' if text_to_image else 'image->text'}")
    ax.set(xlabel="step", ylabel="recall %", title="dev retrieval recall (CLIP_benchmark definitions)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False, fontsize="small")
