"""Linear probe of a model on an eval dataset: image features of its train / val / test splits (every rank
embeds its share; cached per model and dataset), then eval.probe on every rank (deterministic: the same
numbers everywhere, no collective while training).

    run = run_linear_probe(model, tokenizer, transform, train_src, test_src, val_src=None, val_proportion=0.2,
                           cfg=ProbeConfig(), cache_dir="runs/x/eval/features")

Features are L2-normalised image embeddings (CLIP_benchmark's Featurizer, normalize=True). The cache key is
the model's weights (sha256 of every tensor), the split's files (path, size, mtime; a URL's size and ETag), the transform, the
precision and the label mapping: a retrained model or a changed dataset is embedded again, never read stale.
Without a val split, `val_proportion` of the train features (a seeded draw) chooses the weight decay.
"""
import hashlib
import json
import os
from collections import Counter
from typing import Dict, List, Optional, Tuple

import torch

from clipforge.atomic import atomic_path
from clipforge.data_pipeline import remote
from clipforge.eval.api import EvalRun, is_index, classnames_from, embed_share, gather_skips, label_indices
from clipforge.modeling.model import open_clip_module
from clipforge.eval.classification import chance_levels
from clipforge.eval.distributed import comm_for_world, rank_world
from clipforge.eval.embed import Embedded
from clipforge.eval.folders import ImageFolderSet
from clipforge.eval.probe import ProbeConfig, linear_probe
from clipforge.eval.retrieval import Comm
from clipforge.eval.sources import EvalSource


def model_fingerprint(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(open_clip_module(model).state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _files(source: EvalSource) -> List[str]:
    if isinstance(source.data, ImageFolderSet):
        return [p for p, _ in source.data.samples]
    return [s.path for s in source.data.shards]


def data_fingerprint(source: EvalSource, **settings) -> str:
    files = [(p if remote.is_url(p) else os.path.abspath(p), *remote.stamp(p)) for p in _files(source)]
    blob = json.dumps({"layout": source.layout, "files": files, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def split_features(model, tokenizer, transform, source: EvalSource, label_key: str, common: Dict,
                   cache: Optional[str]) -> Tuple[torch.Tensor, List, Counter, Dict]:
    """(features [n, d], raw labels [n], skipped counts, skipped examples) of one split, the same on every rank.
    Raw labels (names or indices) are mapped to classes later, once every split's labels are known."""
    comm = comm_for_world()
    hit = comm.gather_objects(bool(cache) and os.path.isfile(cache))[0]  # rank 0 decides: all ranks agree
    if hit:
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        return (saved["features"], json.loads(saved["labels"]), Counter(json.loads(saved["skipped"])),
                json.loads(saved["examples"]))
    local = embed_share(model, tokenizer, transform, source.data, need="label", label_key=label_key,
                        progress=False, **common)
    x = comm.all_gather_cat(local.image_emb)
    labels = [v for part in comm.gather_objects(list(local.labels)) for v in part]
    skipped, examples = gather_skips(comm, local)
    if cache and rank_world()[0] == 0:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with atomic_path(cache) as tmp:
            torch.save({"features": x, "labels": json.dumps(labels), "skipped": json.dumps(skipped),
                        "examples": json.dumps(examples)}, tmp)
    return x, labels, Counter(skipped), examples


def run_linear_probe(model, tokenizer, transform, train: EvalSource, test: EvalSource,
                     val: Optional[EvalSource] = None, val_proportion: float = 0.2,
                     classnames: Optional[List[str]] = None, label_key: str = "label",
                     cfg: Optional[ProbeConfig] = None, batch_size: int = 256, device: str = "cpu",
                     precision: str = "fp32", workers: int = 0, cache_dir: Optional[str] = None) -> EvalRun:
    cfg = cfg or ProbeConfig()
    common = dict(batch_size=batch_size, device=device, precision=precision, workers=workers)
    model_fp = model_fingerprint(model)[:16] if cache_dir else ""
    raw, skipped, examples = {}, Counter(), {}
    for split, source in (("train", train), ("val", val), ("test", test)):
        if source is None:
            continue
        cache = None
        if cache_dir:
            fp = data_fingerprint(source, transform=repr(transform), precision=precision, label_key=label_key)
            cache = os.path.join(cache_dir, model_fp, f"{source.name}-{split}-{fp[:16]}.pt")
        x, labels, split_skipped, split_examples = split_features(model, tokenizer, transform, source, label_key,
                                                                  common, cache)
        raw[split] = (x, labels)
        skipped.update(split_skipped)
        for reason, where in split_examples.items():
            examples.setdefault(reason, where)
    every = [v for _, labels in raw.values() for v in labels]
    names = classnames or train.classnames or test.classnames
    if names is None and every and all(is_index(v) for v in every):  # a probe needs no names, only indices
        names = [str(i) for i in range(max(int(v) for v in every) + 1)]
    names = classnames_from(Comm(), every, names, label_key)
    splits = {k: (x.to(device), label_indices(labels, names).to(device)) for k, (x, labels) in raw.items()}
    train_x, train_y = splits["train"]
    if "val" not in splits and val_proportion > 0:  # a seeded share of train chooses the weight decay
        perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(cfg.seed)).to(device)
        n_val = int(round(val_proportion * len(train_y)))
        keep = perm[n_val:].sort().values
        splits["val"] = (train_x[perm[:n_val]], train_y[perm[:n_val]])
        train_x, train_y = train_x[keep], train_y[keep]
    metrics, tried = linear_probe(train_x, train_y, *splits["test"], len(names), val=splits.get("val"), cfg=cfg)
    # CLIP_benchmark's own names too (lp_*), so its `build` step and tools that read them see the same numbers
    metrics.update({f"lp_{k}": metrics[k] for k in ("acc1", "acc5", "mean_per_class_recall")})
    metrics.update(epochs=cfg.epochs, seed=cfg.seed, fewshot_k=cfg.fewshot_k, normalized=True)
    counts = {"train": len(train_y), "val": len(splits["val"][1]) if "val" in splits else 0,
              "test": len(splits["test"][1]), "classes": len(names), "dim": int(train_x.shape[1])}
    chance = chance_levels(len(names))
    local = Embedded(splits["test"][0].cpu(), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    return EvalRun("linear_probe", metrics, chance, counts, dict(skipped), examples, local,
                   extra={"classnames": names, "val_acc1": {f"{k:.6g}": v for k, v in tried.items()},
                          "probe": {**cfg.__dict__, "val_proportion": val_proportion if val is None else None}})
