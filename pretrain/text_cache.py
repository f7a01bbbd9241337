"""The locked text tower's outputs, computed once per (shard dataset, tower) and read by the loader.

LiT trains the image tower against a frozen text tower: running the 22 M-parameter MiniLM forward at
every step is pure waste (Flickr8k: 30,000 captions, a 1,000-step run at batch 128 re-encodes each ~4
times). So before training, every caption of every source is encoded once -- the pooled output of the
frozen encoder, in fp32, with the tower in eval mode -- and stored beside the shards
(data_pipeline/embeddings.py); the train loader then hands out these vectors instead of tokens and only
the trainable projection head runs (ContrastiveModel.forward(text_vectors=...)).

    store = ensure_text_store(cfg, bundle, dist)   # (name, identity) or None; every rank calls it

Ranks split the shards (rank r encodes shards r, r+W, ...); rank 0 writes the manifest last, after a
barrier, so a store is either complete or absent. The store's identity is the tower's config (with its
tokenizer's context length) and the sha256 of every file of the HF model folder: another tower or
other captions can never be read silently.
"""
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as torch_dist

from clipforge.data_pipeline import embeddings
from clipforge.data_pipeline.shards import open_shards
from clipforge.modeling.model import ModelBundle, locked_text_vectors, text_is_cacheable

BATCH = 256  # captions per forward: MiniLM-L6 at context 24 is ~30 ms per 256 on one core


def tower_identity(model_cfg: Dict) -> Dict:
    """What the stored vectors depend on: the HF tower's config and the bytes of its model folder."""
    text_cfg = model_cfg["text_cfg"]
    folder = text_cfg["hf_model_name"]
    # Where the folder lies is not what it holds: a moved venv keeps its stores valid.
    settings = {k: v for k, v in text_cfg.items() if k not in ("hf_model_name", "hf_tokenizer_name")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            digest.update(os.path.relpath(os.path.join(root, name), folder).encode())
            with open(os.path.join(root, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return {"kind": "hf-text-pooled", "hf_model": os.path.basename(folder.rstrip("/")),
            "context_length": text_cfg.get("context_length", 77), "sha256": digest.hexdigest()}


def encode_shard(bundle: ModelBundle, shard_path: str, device: torch.device) -> Tuple[List[str], List[int], np.ndarray]:
    """-> (keys, captions per key, float32 [sum captions, d]) of one tar, captions in KEY.txt order."""
    keys, counts, captions = [], [], []
    for sample in open_shards(shard_path).iter_samples():
        keys.append(sample["key"])
        counts.append(len(sample["captions"]))
        captions.extend(sample["captions"])
    clip = bundle.clip
    chunks = []
    for start in range(0, len(captions), BATCH):
        tokens = bundle.tokenizer(captions[start:start + BATCH]).to(device)
        chunks.append(locked_text_vectors(clip, tokens).float().cpu().numpy())
    dim = clip.text.transformer.config.hidden_size
    return keys, counts, np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)


def _barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def build_store(spec: str, name: str, identity: Dict, encode: Callable[[str], tuple], rank: int, world: int,
                dim: int, tower: str = "text") -> None:
    """Encode every shard of one dataset (this rank's share), then rank 0 writes the manifest. encode(tar path) ->
    (keys, captions per key, text [sum captions, dim], image [keys, dim] or None); also `clipforge embed`'s."""
    shard_set = open_shards(spec)
    tars = [s.name for s in shard_set.shards]
    directory = embeddings.store_dir(spec, name)
    if rank == 0 and os.path.isdir(directory):
        shutil.rmtree(directory)  # stale or partial: recomputed from nothing
    _barrier()
    for shard in shard_set.shards[rank::world]:
        embeddings.write_shard(directory, shard.name, *encode(shard.path))
    _barrier()
    if rank == 0:
        embeddings.write_manifest(directory, spec=spec, model=identity, tar_names=tars, dim=dim, tower=tower)
    _barrier()


def ensure_text_store(cfg, bundle: ModelBundle, rank: int, world: int,
                      device: torch.device) -> Optional[Tuple[str, Dict]]:
    """(store name, identity) when the text tower is locked whole and model.text_cache is on; every
    source's store is checked and (re)built when missing, partial or stale."""
    if not (cfg.model.text_cache and text_is_cacheable(cfg.model)):
        return None
    identity = tower_identity(bundle.model_cfg)
    name = f"text-{identity['sha256'][:16]}"
    was_training = bundle.model.training
    bundle.model.eval()
    for source in cfg.data.sources:
        tars = [s.name for s in open_shards(source.path).shards]
        try:
            embeddings.check_store(source.path, name, identity, tars)
            if rank == 0:
                print(f"text cache: reading {embeddings.store_dir(source.path, name)}", file=sys.stderr)
            continue
        except embeddings.StaleEmbeddings as why:
            reason = str(why)
        _barrier()  # every rank has checked before rank 0 may delete a stale store
        start = time.perf_counter()
        if rank == 0:
            print(f"text cache: encoding {source.path} once ({reason.split(';')[0]})", file=sys.stderr)
        build_store(source.path, name, identity, lambda path: (*encode_shard(bundle, path, device), None), rank,
                    world, bundle.clip.text.transformer.config.hidden_size)
        if rank == 0:
            print(f"text cache: {embeddings.store_dir(source.path, name)} written in "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    bundle.model.train(was_training)
    return name, identity
