"""The functions the CLI and the trainer's periodic eval share.

    metrics = evaluate_retrieval(model, tokenizer, transform_or_preprocess_cfg, "shards-val/", recall_k=[1, 5, 10])

Works on one process or under torchrun/srun (every rank calls it; each embeds its share of the batches,
image embeddings are all-gathered, each rank ranks its own captions, integer counts are summed): every
rank returns the same numbers, equal to a single-process run. The model may be an open_clip model, the
trainer's wrapper or a DeepSpeed engine around it (modeling.model.open_clip_module unwraps them), at any
ZeRO stage (ZeRO-3's partitioned parameters are gathered for the eval, read-only).
"""
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from clipforge.eval import classification
from clipforge.eval.datasets import eval_loader, open_eval_data, rank_share
from clipforge.eval.distributed import comm_for_world, rank_world
from clipforge.eval.embed import Embedded, autocast_for, embed_batches, empty_like_dim
from clipforge.eval.errors import EvalDataError
from clipforge.eval.ranking import DEFAULT_TILE
from clipforge.eval.retrieval import chance_levels, retrieval_metrics
from clipforge.modeling.eval_options import RECALL_K, EvalOptions
from clipforge.modeling.model import embed_dim, open_clip_module
from clipforge.modeling.preprocess import val_transform


@dataclass
class EvalRun:
    task: str
    metrics: Dict[str, float]
    chance: Dict[str, float]
    counts: Dict[str, int]
    skipped: Dict[str, int]
    skipped_examples: Dict[str, str]
    local: Embedded  # this rank's embeddings (the report reads them)
    image_offset: int = 0  # global index of this rank's first image
    text_offset: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


def is_zero3(module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


def gathered(module):
    """ZeRO-3 partitions parameters; encode_image/encode_text outside the engine's forward would see empty
    tensors. Gather them all for the duration of the eval (read-only); a no-op for ordinary modules."""
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _transform(transform_or_cfg):
    return val_transform(transform_or_cfg) if isinstance(transform_or_cfg, dict) else transform_or_cfg


def embed_share(model, tokenizer, transform, data, batch_size, device, precision, workers, need, label_key,
                 progress):
    rank, world = rank_world()
    dataset = open_eval_data(data) if isinstance(data, str) else data
    start, end = rank_share(dataset.num_samples, batch_size, rank, world)
    loader = eval_loader(dataset, start, end, _transform(transform), batch_size, need, label_key, workers)
    module = open_clip_module(model)
    was_training = module.training
    module.eval()
    lockstep = None
    if world > 1 and is_zero3(module):  # same number of forwards on every rank (ZeRO-3 hooks all-gather)
        lockstep = int(comm_for_world().all_reduce_max(torch.tensor(len(loader))))
    try:
        with gathered(module):
            local = embed_batches(module, tokenizer, loader, device, precision, with_text=need != "label",
                                  progress=progress and rank == 0, lockstep=lockstep)
    finally:
        module.train(was_training)
    return empty_like_dim(local, embed_dim(module))


def gather_skips(comm, local: Embedded):
    counts, examples = Counter(), {}
    for part_counts, part_examples in comm.gather_objects((dict(local.skipped), local.skipped_examples)):
        counts.update(part_counts)
        for reason, where in part_examples.items():
            examples.setdefault(reason, where)
    return dict(counts), examples


def run_retrieval(model, tokenizer, transform, data, recall_k: Sequence[int] = tuple(RECALL_K),
                  batch_size: int = EvalOptions.batch_size, device: str = "cpu", precision: str = "fp32",
                  workers: int = EvalOptions.workers, tile=DEFAULT_TILE,
                  progress: bool = False) -> EvalRun:
    comm = comm_for_world()
    local = embed_share(model, tokenizer, transform, data, batch_size, device, precision, workers, "captions",
                         None, progress)
    sizes = comm.all_gather_cat(torch.tensor([len(local.image_emb), len(local.text_emb)]))
    rank = rank_world()[0]
    image_offset, text_offset = int(sizes[0:2 * rank:2].sum()), int(sizes[1:2 * rank:2].sum())
    images = comm.all_gather_cat(local.image_emb.to(device))
    if len(images) == 0:
        skipped, _ = gather_skips(comm, local)
        raise EvalDataError(f"no usable image-caption pair in the eval data (skipped: {skipped or 'none'})")
    texts = local.text_emb.to(device)
    t2i = (local.text_to_image + image_offset).to(device)
    metrics = retrieval_metrics(texts, t2i, images, recall_k, tile, text_offset, comm)
    per_image = torch.bincount(local.text_to_image, minlength=len(local.image_emb))
    all_per_image = comm.all_gather_cat(per_image)
    skipped, examples = gather_skips(comm, local)
    counts = {"images": len(images), "captions": int(all_per_image.sum())}
    return EvalRun("zeroshot_retrieval", metrics, chance_levels(len(images), all_per_image, sorted(set(recall_k))),
                   counts, skipped, examples, local, image_offset, text_offset, {"all_images": images})


def evaluate_retrieval(model, tokenizer, transform, data, recall_k: Sequence[int] = tuple(RECALL_K),
                       batch_size: int = EvalOptions.batch_size, device: str = "cpu", precision: str = "fp32",
                       workers: int = EvalOptions.workers) -> Dict:
    """CLIP_benchmark retrieval metrics of `model` on a shard dataset (the trainer's periodic eval)."""
    return run_retrieval(model, tokenizer, transform, data, recall_k, batch_size, device, precision, workers).metrics


def is_index(v) -> bool:
    return isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())


def label_indices(labels: List, classnames: List[str]) -> torch.Tensor:
    """Raw labels -> class indices: an int (or a digit string, as KEY.cls holds) is the index itself,
    any other string is looked up among the class names."""
    position = {name: i for i, name in enumerate(classnames)}
    out = []
    for v in labels:
        if is_index(v):
            out.append(int(v))
        elif v in position:
            out.append(position[v])
        else:
            raise EvalDataError(f"label {v!r} is not among the {len(classnames)} class names (e.g. {classnames[:3]}); "
                             "fix --classnames or --label-key")
    return torch.tensor(out, dtype=torch.long)


def classnames_from(comm, labels: List, classnames: Optional[List[str]], label_key: str) -> List[str]:
    """The given class names, else the sorted distinct label names of every rank (the same list everywhere)."""
    if classnames is not None:
        return classnames
    seen = sorted({v for part in comm.gather_objects(sorted({str(v) for v in labels})) for v in part})
    if not seen:
        raise EvalDataError(f"no sample carries a label under {label_key!r} (KEY.json) or a KEY.cls; "
                         "set --label-key to the field that holds the class")
    if any(is_index(v) for v in seen):
        raise EvalDataError("the labels are class indices: give --classnames FILE so they can become prompts")
    return seen


def run_classification(model, tokenizer, transform, data, templates, classnames: Optional[List[str]] = None,
                       label_key: str = "label", batch_size: int = EvalOptions.batch_size, device: str = "cpu",
                       precision: str = "fp32", workers: int = EvalOptions.workers, progress: bool = False) -> EvalRun:
    comm = comm_for_world()
    local = embed_share(model, tokenizer, transform, data, batch_size, device, precision, workers, "label",
                         label_key, progress)
    classnames = classnames_from(comm, local.labels, classnames, label_key)
    labels = label_indices(local.labels, classnames)
    top = int(comm.all_reduce_max(labels.max() if len(labels) else torch.tensor(-1)))
    if top >= len(classnames):
        raise EvalDataError(f"label index {top} (field {label_key!r}) but only {len(classnames)} class names; "
                         "give a --classnames file with every class")
    module = open_clip_module(model)
    with torch.no_grad(), gathered(module):
        with autocast_for(device, precision):
            classifier = classification.zero_shot_classifier(module.encode_text, tokenizer, classnames, templates,
                                                             batch_size, device)
    metrics = classification.classification_metrics(local.image_emb.to(device), labels.to(device),
                                                    classifier.float(), comm=comm)
    skipped, examples = gather_skips(comm, local)
    n = int(comm.all_reduce_sum(torch.tensor(len(labels))))
    return EvalRun("zeroshot_classification", metrics, classification.chance_levels(len(classnames)),
                   {"images": n, "classes": len(classnames)}, skipped, examples, local,
                   extra={"classnames": classnames, "labels": labels, "classifier": classifier})
