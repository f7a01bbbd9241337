"""Sizing arithmetic behind docs/scaling.md: memory per GPU, loader cores, shard plans (the tables are
bench/sizing_tables.py, the command that prints or writes them bench/sizing.py).

Each number is a formula over an open_clip model config (parameter counts by instantiating the
config on torch's meta device: exact, no memory), with the constants below stated and sourced.
tests/bench/test_sizing.py checks a few by hand and the activation constant against a measurement.
"""
from functools import lru_cache
from typing import Dict

from bench.model_configs import model_config
from clipforge.modeling.flops import PEAK_BF16_FLOPS, TEXT_DEFAULTS, vision_tokens

GB = 1e9
MODELS = ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14", "ViT-g-14"]
GPU_COUNTS = [1, 8, 128, 1024]
# Mixed-precision Adam (ZeRO paper, Rajbhandari et al. 2020): bf16 weights 2 B + bf16 grads 2 B +
# fp32 master weights, Adam m and v 4+4+4 B = 16 B per parameter. Stage 1 shards the 12, stage 2
# also the grads, stage 3 also the weights, over the data-parallel GPUs.
WEIGHT_B, GRAD_B, OPTIM_B = 2, 2, 12
# Activations saved for backward, bytes per (token x width x layer) with bf16 weights (DeepSpeed
# bf16, no autocast) and fused attention (no T x T scores kept): measured 32.1 with
# torch.autograd saved-tensor hooks on open_clip blocks (test_sizing.py re-measures it).
ACT_B = 32
# With open_clip's grad checkpointing (per block) only each block's bf16 input is kept (2 B per
# token x width x layer) and one block at a time is recomputed with full activations.
CKPT_B = 2
# Shards: a 256-px (shorter side) JPEG q95 averages 47.5 kB on the Flickr8k originals (measured,
# 300 photos) + caption, json and tar headers (~2.5 kB) -> 50 kB per sample.
BYTES_PER_SAMPLE = 50_000
SAMPLES_PER_SHARD = 10_000          # img2dataset's default; 500 MB shards at 50 kB/sample
MIN_SAMPLES_PER_SHARD = 1_000       # 50 MB: below this, opening shards dominates reading them
WORKERS_PER_GPU = 8                 # loader processes per GPU (open_clip's usual --workers 8)
SHARDS_PER_WORKER = 10              # so the end-of-epoch imbalance is <= 1/10 of a worker's share
# Loader throughput per CPU core: 256-px shard JPEG -> 224 train crop + tokens, samples per
# CPU-second, measured by bench/loader.py on this project's dev machine (Intel Xeon, 2026-11-23,
# BENCHMARKS.md),
# clipforge's loader vs open_clip's get_wds_dataset on the same shards in the same run.
LOADER_PER_CORE = 1045
LOADER_PER_CORE_SOURCE = "bench/loader.py, Intel Xeon dev machine, 2026-11-23"
OPEN_CLIP_PER_CORE = 230
# Published training throughput, LAION "reproducible scaling laws" runs (Cherti et al. 2023,
# trained_models_info.csv): A100-40GB, samples/s over all GPUs / GPUs.
ANCHOR_A100 = {"ViT-B-32": (93_294, 128, 32_768), "ViT-B-16": (134_240, 344, 88_064),
               "ViT-L-14": (60_328, 768, 86_016)}
A100_PEAK, H100_PEAK = PEAK_BF16_FLOPS["A100"], PEAK_BF16_FLOPS["H100"]


@lru_cache(maxsize=None)
def param_counts(name: str) -> Dict[str, int]:
    """Exact parameter counts of an open_clip config, built on the meta device (no memory)."""
    import open_clip
    import torch
    with torch.device("meta"):
        model = open_clip.CLIP(**model_config(name))
    image = sum(p.numel() for p in model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "image": image, "text": total - image}


def zero_bytes(params: int, stage: int, gpus: int) -> Dict[str, float]:
    """Model-state bytes per GPU for ZeRO stage 0..3 over `gpus` data-parallel GPUs."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"deepspeed.zero_stage={stage}: allowed 0, 1, 2, 3")
    w = params * WEIGHT_B / (gpus if stage >= 3 else 1)
    g = params * GRAD_B / (gpus if stage >= 2 else 1)
    o = params * OPTIM_B / (gpus if stage >= 1 else 1)
    return {"weights": w, "grads": g, "optim": o, "total": w + g + o}


def _towers(cfg: Dict):
    """(tokens, width, layers) of the image and the text tower."""
    v, t = cfg["vision_cfg"], {**TEXT_DEFAULTS, **cfg["text_cfg"]}
    return [(vision_tokens(v), v["width"], v["layers"]), (t["context_length"], t["width"], t["layers"])]


def activation_bytes_per_sample(cfg: Dict, checkpointing: bool = False) -> float:
    """Bytes kept for backward per sample (both towers, bf16), excluding the loss."""
    towers = _towers(cfg)
    if not checkpointing:
        return sum(ACT_B * n * w * L for n, w, L in towers)
    # block inputs of every layer + one block's full activations (the widest) being recomputed
    return sum(CKPT_B * n * w * L for n, w, L in towers) + max(ACT_B * n * w for n, w, _ in towers)


def loss_bytes(global_batch: int, gpus: int, dim: int, impl: str, tile: int = 4096) -> float:
    """Per-GPU memory of the contrastive loss at global batch B over `gpus` GPUs.
    naive-global: open_clip default, every GPU builds B x B logits both ways + softmax: 16*B^2.
    naive-local:  open_clip --local-loss: b x B per GPU (b = B/gpus): 16*b*B.
    tiled:        clipforge loss.impl=tiled: gathered fp32 features + their grads 16*B*d, and
                  three fp32 tile x tile blocks."""
    B = global_batch
    if impl == "naive-global":
        return 16.0 * B * B
    if impl == "naive-local":
        return 16.0 * (B / gpus) * B
    if impl == "tiled":
        return 16.0 * B * dim + 3 * 4.0 * min(tile, B) ** 2
    raise ValueError(f"loss impl {impl!r}: naive-global, naive-local or tiled")


def loader_cores_per_gpu(samples_per_s_per_gpu: float, per_core: float = LOADER_PER_CORE) -> float:
    return samples_per_s_per_gpu / per_core


def shard_plan(num_samples: int, gpus: int, workers_per_gpu: int = WORKERS_PER_GPU) -> Dict:
    """Shard count and size: SHARDS_PER_WORKER shards for every loader worker (<= 10% end-of-epoch
    imbalance), within MIN..SAMPLES_PER_SHARD samples a shard (tiny shards cost a file open per
    few samples). When a dataset is too small for that, the note says what the loader does."""
    workers = gpus * workers_per_gpu
    per_shard = max(MIN_SAMPLES_PER_SHARD,
                    min(SAMPLES_PER_SHARD, num_samples // (workers * SHARDS_PER_WORKER)))
    shards = -(-num_samples // per_shard)
    spw = shards / workers
    note = ("" if spw >= SHARDS_PER_WORKER else
            f"end-of-epoch imbalance up to {100 / spw:.0f}% of a worker's share" if spw >= 1 else
            "fewer shards than workers: use fewer workers or smaller shards")
    return {"workers": workers, "samples_per_shard": per_shard, "shards": shards,
            "shards_per_worker": spw, "shard_mb": per_shard * BYTES_PER_SAMPLE / 1e6,
            "total_tb": num_samples * BYTES_PER_SAMPLE / 1e12, "note": note}
