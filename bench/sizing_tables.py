"""The markdown tables of docs/scaling.md, each a function of bench/sizing_formulas.py's formulas."""
from typing import Dict

from bench.common import markdown_table
from bench.model_configs import model_config
from bench.sizing_formulas import (A100_PEAK, ANCHOR_A100, GB, GPU_COUNTS, H100_PEAK, LOADER_PER_CORE,
                                   LOADER_PER_CORE_SOURCE, MODELS, OPEN_CLIP_PER_CORE,
                                   activation_bytes_per_sample, loader_cores_per_gpu, loss_bytes,
                                   param_counts, shard_plan, zero_bytes)
from clipforge.modeling.flops import clip_flops

RESERVE = 3 * GB   # CUDA context, allocator slack, DeepSpeed buckets: kept free when sizing batches
EMBED = {m: model_config(m)["embed_dim"] for m in MODELS}


def models_table() -> str:
    rows = []
    for m in MODELS:
        p, f, cfg = param_counts(m), clip_flops(model_config(m)), model_config(m)
        rows.append([m, p["total"] / 1e6, p["image"] / 1e6, p["text"] / 1e6, f["train"] / 1e9,
                     activation_bytes_per_sample(cfg) / 1e6,
                     activation_bytes_per_sample(cfg, checkpointing=True) / 1e6])
    return markdown_table(["model", "params M", "image M", "text M", "train GFLOPs/sample",
                           "activations MB/sample", "with grad ckpt MB/sample"], rows)


def zero_table(gpus: int = 8) -> str:
    rows = []
    for m in MODELS:
        n = param_counts(m)["total"]
        for stage in range(4):
            z = zero_bytes(n, stage, gpus)
            rows.append([m, stage, z["weights"] / GB, z["grads"] / GB, z["optim"] / GB, z["total"] / GB]
                        + [zero_bytes(n, stage, g)["total"] / GB for g in (128, 1024)])
    return markdown_table(["model", "ZeRO", f"weights GB ({gpus} GPUs)", "grads GB", "optimizer GB",
                           f"total GB ({gpus} GPUs)", "total GB (128)", "total GB (1,024)"], rows)


def max_batch(model: str, memory: float, stage: int, gpus: int, ckpt: bool) -> int:
    cfg = model_config(model)
    free = memory - RESERVE - zero_bytes(param_counts(model)["total"], stage, gpus)["total"]
    # with checkpointing the per-sample figure already holds the one block being recomputed
    return max(0, int(free // activation_bytes_per_sample(cfg, ckpt)))


def batch_table(gpus: int = 128, stage: int = 1) -> str:
    rows = [[m, mem] + [max_batch(m, mem * GB, stage, gpus, ck) for ck in (False, True)]
            for m in MODELS for mem in (40, 80)]
    return markdown_table(["model", "GPU GB", "max per-GPU batch", "with grad ckpt"], rows)


def loss_table(gpus: int = 128) -> str:
    rows = [[B] + [loss_bytes(B, gpus, 512, impl) / GB for impl in ("naive-global", "naive-local")]
            + [loss_bytes(B, gpus, d, "tiled") / GB for d in (512, 1024)]
            for B in (32_768, 65_536, 131_072, 1_048_576)]
    return markdown_table(["global batch", "naive global GB", f"naive local GB ({gpus} GPUs)",
                           "tiled GB (d=512)", "tiled GB (d=1024)"], rows)


def throughput(model: str) -> Dict[str, float]:
    """A100 samples/s/GPU: published where the LAION runs give it, else at the MFU of ViT-L-14's
    run; H100 at the same MFU scaled by the peak ratio (datasheet peaks, an estimate)."""
    train = clip_flops(model_config(model))["train"]
    ref = model if model in ANCHOR_A100 else "ViT-L-14"
    total, gpus, _ = ANCHOR_A100[ref]
    mfu = clip_flops(model_config(ref))["train"] * total / gpus / A100_PEAK
    a100 = total / gpus if model in ANCHOR_A100 else mfu * A100_PEAK / train
    return {"a100": a100, "h100": a100 * H100_PEAK / A100_PEAK, "mfu": mfu,
            "published": model in ANCHOR_A100}


def loader_table() -> str:
    rows = []
    for m in MODELS:
        t = throughput(m)
        rows.append([m, t["a100"], "published" if t["published"] else "from L/14's MFU",
                     f"{100 * t['mfu']:.1f}%", loader_cores_per_gpu(t["a100"]),
                     t["a100"] / OPEN_CLIP_PER_CORE, t["h100"], loader_cores_per_gpu(t["h100"]),
                     t["h100"] / OPEN_CLIP_PER_CORE])
    return (markdown_table(["model", "A100 samples/s/GPU", "source", "MFU", "clipforge cores/GPU",
                            "open_clip cores/GPU", "H100 samples/s/GPU (est.)",
                            "clipforge cores/GPU", "open_clip cores/GPU"], rows)
            + f"\nclipforge per-core rate used: {LOADER_PER_CORE:,} samples/s/core ({LOADER_PER_CORE_SOURCE}); "
              f"open_clip's loader in the same run: {OPEN_CLIP_PER_CORE} samples/s/core.\n")


def shard_table() -> str:
    rows = []
    for n in (3_000_000, 12_000_000, 400_000_000, 2_000_000_000):
        for g in GPU_COUNTS:
            s = shard_plan(n, g)
            rows.append([n, g, s["workers"], s["samples_per_shard"], s["shards"],
                         s["shards_per_worker"], s["shard_mb"], s["total_tb"], s["note"]])
    return markdown_table(["dataset samples", "GPUs", "loader workers", "samples/shard", "shards",
                           "shards/worker", "shard MB", "dataset TB", "note"], rows)


def anchors_table() -> str:
    """Published runs: does the guide say they fit where they were run?"""
    runs = [  # (run, model, gpus, per-GPU batch, GPU GB, ZeRO stage, grad ckpt, loss impl)
        ("open_clip LAION-2B B/32 (scaling laws)", "ViT-B-32", 128, 256, 40, 0, False, "naive-local"),
        ("EVA02-CLIP-B/16, batch 131k", "ViT-B-16", 64, 2048, 40, 1, True, "naive-local"),
        ("EVA02-CLIP-L/14, batch 131k", "ViT-L-14", 128, 1024, 40, 1, True, "naive-local"),
        ("EVA01-CLIP-g/14, batch 41k", "ViT-g-14", 256, 160, 40, 1, True, "naive-local"),
    ]
    rows = []
    for name, m, gpus, b, mem, stage, ck, impl in runs:
        states = zero_bytes(param_counts(m)["total"], stage, gpus)["total"]
        act = b * activation_bytes_per_sample(model_config(m), ck)
        loss = loss_bytes(b * gpus, gpus, EMBED[m], impl)
        total = states + act + loss
        rows.append([name, f"{gpus} × A100-{mem}GB", b, stage, "yes" if ck else "no", states / GB,
                     act / GB, loss / GB, total / GB, "fits" if total + RESERVE <= mem * GB else "DOES NOT FIT"])
    return markdown_table(["published run", "GPUs", "batch/GPU", "ZeRO", "grad ckpt", "states GB",
                           "activations GB", "loss GB", "total GB", "guide says"], rows)


SECTIONS = {"models": models_table, "zero": zero_table, "batch": batch_table, "loss": loss_table,
            "loader": loader_table, "shards": shard_table, "anchors": anchors_table}
