"""bench.gpu's loader rows: the train loader's samples/s per GPU with data.decode=gpu and =cpu, beside the trainer's.

Shards: photo-like JPEGs (tests/data_pipeline/photos.py: gradients, sharp edges, stripes, noise) at 256 x 341, q95
-- what the converter writes for 256-px shards -- in one tar (4,096 of them; 1,024 with --quick). The loader makes
224-px train crops + ViT-B-32 tokens, batch 256, with min(8, cores - 1) worker processes (the cores one GPU of a
node gets). Measured: one epoch after
a warm-up epoch (worker start), until the images are on the device -- decode=cpu: the pinned batch copied with
non_blocking; decode=gpu: decoded there -- synchronised. The issue's goal (#19): with decode=gpu, the loader's
samples/s per GPU >= the trainer's ViT-B/32 samples/s, so that the CPU cores per GPU stop being the limit.
"""
import os
import tempfile
import time
from typing import Callable, Dict, List

import torch

from bench.common import markdown_table

IMAGE_SIZE, TOKENIZER = 224, "ViT-B-32"


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def epoch_rate(loader, device: torch.device, sync: Callable[[torch.device], None]) -> Dict[str, float]:
    """Samples/s of one epoch after a warm-up epoch, the images on `device` at the end of each batch."""
    def epoch() -> int:
        n = 0
        for batch in loader:
            n += batch["images"].to(device, non_blocking=True).shape[0]
        sync(device)
        return n
    epoch()
    t0 = time.perf_counter()
    samples = epoch()
    seconds = time.perf_counter() - t0
    return {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds}


def loader_figures(device: torch.device, sync: Callable[[torch.device], None], images: int, batch: int,
                   workers: int) -> List[Dict]:
    """One row per data.decode (cpu, gpu): decode, workers, batch, samples, seconds, samples_per_s."""
    import open_clip

    from clipforge.data_pipeline.config import DataConfig, SourceConfig
    from clipforge.data_pipeline.stream import build_train_loader
    from tests.data_pipeline.photos import photo_jpeg, write_shards

    tokenizer = open_clip.get_tokenizer(TOKENIZER)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-loader-") as tmp:
        shards = write_shards(os.path.join(tmp, "shards"),
                              [(f"{i:06d}", photo_jpeg(i, 256, 341, quality=95), "jpg") for i in range(images)])
        for decode in ("cpu", "gpu"):
            cfg = DataConfig(sources=[SourceConfig(shards)], workers=workers, decode=decode, shuffle_window=images)
            loader = build_train_loader(cfg, seed=0, global_batch_size=batch, rank=0, world_size=1,
                                        image_size=IMAGE_SIZE, tokenizer=tokenizer, device=device)
            rows.append({"decode": decode, "workers": workers, "batch": batch, **epoch_rate(loader, device, sync)})
            del loader  # its worker processes end before the next loader's start
    return rows


def loader_markdown(rows: List[Dict], trainer_samples_per_s: float) -> str:
    """The GPU section's loader table, each row against the trainer's ViT-B/32 samples/s."""
    table = [[r["decode"], r["workers"], r["batch"], r["samples_per_s"],
              f"{r['samples_per_s'] / trainer_samples_per_s:.2f}x"] for r in rows]
    return markdown_table(["data.decode", "workers", "batch", "loader samples/s", "vs trainer ViT-B/32"], table)
