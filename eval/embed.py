"""Embed this rank's share of an eval set: L2-normalised image and caption embeddings, in batches.

    local = embed_batches(model, tokenizer, loader, device="cpu", precision="fp32", with_text=True)
    local.image_emb [n, d], local.text_emb [m, d], local.text_to_image [m] (indices into local images)

Precision: fp32 (the default, and what a CPU should use); bf16/fp16 run the towers under torch.autocast
(CLIP_benchmark autocasts by default; on CPU that is bf16 and moves R@k by a few tenths). Embeddings are
returned as float32 whatever the precision, and the metrics are computed in float32.
"""
import contextlib
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from clipforge.eval.errors import EvalOptionError

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class Embedded:
    image_emb: torch.Tensor
    text_emb: torch.Tensor
    text_to_image: torch.Tensor
    keys: List[str] = field(default_factory=list)
    captions: List[List[str]] = field(default_factory=list)
    labels: List = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: Dict[str, str] = field(default_factory=dict)  # reason -> first "shard:key"


def autocast_for(device: str, precision: str):
    if precision not in PRECISIONS:
        raise EvalOptionError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _dummy_forward(model, tokenizer, device: str, with_text: bool) -> None:
    """One image and one caption through the towers, results dropped: keeps this rank's ZeRO-3 hook
    collectives in step with ranks that still have batches."""
    size = getattr(model.visual, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    model.encode_image(torch.zeros((1, 3) + size, device=device))
    if with_text:
        model.encode_text(tokenizer(["."]).to(device))


@torch.no_grad()
def embed_batches(model, tokenizer, loader, device: str = "cpu", precision: str = "fp32", with_text: bool = True,
                  progress: bool = False, lockstep: Optional[int] = None) -> Embedded:
    """lockstep=N: run exactly N steps, each with one encode_image (+ encode_text) call, padding with dummy
    forwards (ZeRO-3's per-module all-gathers need the same number of forwards on every rank)."""
    images, texts, owner = [], [], []
    out = Embedded(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    num_images = 0
    total = len(loader)
    batches = iter(loader)
    for n in range(total if lockstep is None else lockstep):
        batch = next(batches, None)
        for reason, where in (batch or {}).get("skipped", []):
            out.skipped[reason] += 1
            out.skipped_examples.setdefault(reason, where)
        if batch is None or not batch["keys"]:
            if lockstep is not None:
                with autocast_for(device, precision):
                    _dummy_forward(model, tokenizer, device, with_text)
            continue
        with autocast_for(device, precision):
            images.append(F.normalize(model.encode_image(batch["images"].to(device)).float(), dim=-1).cpu())
            if with_text:
                flat = [c for caps in batch["captions"] for c in caps]
                tokens = tokenizer(flat).to(device)
                texts.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
                owner += [num_images + i for i, caps in enumerate(batch["captions"]) for _ in caps]
        num_images += len(batch["keys"])
        out.keys += batch["keys"]
        out.captions += batch["captions"]
        out.labels += batch["labels"]
        if progress and (n + 1) % 10 == 0:
            print(f"clipforge eval: embedded {n + 1}/{total} batches", file=sys.stderr, flush=True)
    if images:
        out.image_emb = torch.cat(images)
    if texts:
        out.text_emb = torch.cat(texts)
        out.text_to_image = torch.tensor(owner, dtype=torch.long)
    return out


def empty_like_dim(emb: Embedded, dim: int) -> Embedded:
    """A rank with no samples still needs [0, d] tensors for the collectives."""
    if emb.image_emb.dim() != 2:
        emb.image_emb = torch.zeros(0, dim)
    if emb.text_emb.dim() != 2:
        emb.text_emb = torch.zeros(0, dim)
    return emb
