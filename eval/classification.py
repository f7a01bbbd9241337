"""Zero-shot classification with CLIP_benchmark's definitions (clip_benchmark/metrics/zeroshot_classification.py).

    W = zero_shot_classifier(encode_text, tokenizer, classnames, templates)   # [C, d]
    m = classification_metrics(image_emb, labels, W)    # {"acc1", "acc5", "mean_per_class_recall"}

Class embedding = L2-normalised mean of the L2-normalised embeddings of the class's prompts. logits =
100 * image_emb @ W.T. acc@k = fraction of images whose class is among the k best logits, classes ordered
by logit descending then by class index (CLIP_benchmark uses torch.topk, unspecified among ties);
acc5 is NaN (null in JSON) with fewer than 5 classes, as in CLIP_benchmark. mean_per_class_recall =
sklearn's balanced_accuracy_score of the argmax: the mean, over classes that occur in the labels, of
(correct top-1 of that class / images of that class).
"""
import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.eval.errors import EvalDataError
from clipforge.eval.retrieval import Comm
from clipforge.eval.templates import Templates, prompts_for


@torch.no_grad()
def zero_shot_classifier(encode_text: Callable[[torch.Tensor], torch.Tensor], tokenizer, classnames: List[str],
                         templates: Templates, batch_size: int = 256, device="cpu") -> torch.Tensor:
    """[C, d] float32 class embeddings. encode_text: int64 tokens [n, L] -> features [n, d]."""
    prompts = [prompts_for(name, templates) for name in classnames]
    flat = [p for group in prompts for p in group]
    feats = []
    for a in range(0, len(flat), batch_size):
        tokens = tokenizer(flat[a:a + batch_size]).to(device)
        feats.append(F.normalize(encode_text(tokens).float(), dim=-1))
    feats = torch.cat(feats)
    out, start = [], 0
    for group in prompts:
        mean = feats[start:start + len(group)].mean(0)
        out.append(mean / mean.norm())
        start += len(group)
    return torch.stack(out)


def ranks_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: #classes with a higher logit + #lower-index classes with an equal one (0 = top-1).
    NaN ranks as the largest logit, as argmax/topk (CLIP_benchmark) rank it: otherwise a diverged linear probe's
    all-NaN rows would all count as hits (NaN > own and NaN == own are both False) and score 100 %."""
    logits = torch.where(logits.isnan(), torch.inf, logits)
    idx = torch.arange(logits.shape[1], device=logits.device)[None]
    y = labels[:, None]
    own = logits.gather(1, y)
    return ((logits > own) | ((logits == own) & (idx < y))).sum(1)


def true_class_ranks(image_emb: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
                     batch_size: int = 65536) -> torch.Tensor:
    """ranks_from_logits of the zero-shot logits 100 * image_emb @ classifier.T, in batches."""
    ranks = []
    cls = classifier.float().T
    for a in range(0, len(image_emb), batch_size):
        ranks.append(ranks_from_logits(100.0 * image_emb[a:a + batch_size].float() @ cls, labels[a:a + batch_size]))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def classification_metrics(image_emb: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
                           ks: Sequence[int] = (1, 5), comm: Optional[Comm] = None) -> Dict[str, float]:
    """acc{k} for each k, mean_per_class_recall. Under several ranks pass this rank's images and a Comm:
    only integer counts are reduced, so every world size gives the same numbers."""
    num_classes = classifier.shape[0]
    labels = labels.to(classifier.device, torch.long)
    check_labels(labels, num_classes)
    ranks = true_class_ranks(image_emb.to(classifier.device), labels, classifier)
    return metrics_from_ranks(ranks, labels, num_classes, ks, comm)


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise EvalDataError(f"labels must be class indices in [0, {num_classes}) (got {int(labels.min())}.."
                         f"{int(labels.max())})")


def metrics_from_ranks(ranks: torch.Tensor, labels: torch.Tensor, num_classes: int, ks: Sequence[int] = (1, 5),
                       comm: Optional[Comm] = None) -> Dict[str, float]:
    """acc{k} = fraction of rank < k (NaN with fewer than k classes), mean_per_class_recall = balanced accuracy
    of the top-1 (mean over classes present in the labels); counts are summed over ranks by `comm`."""
    comm = comm or Comm()
    ks = sorted(set(int(k) for k in ks) | {1})
    hits = torch.stack([(ranks < k).sum() for k in ks] + [torch.tensor(len(ranks), device=ranks.device)])
    per_class = torch.stack([torch.bincount(labels, minlength=num_classes),
                             torch.bincount(labels[ranks == 0], minlength=num_classes)])
    hits, per_class = comm.all_reduce_sum(hits), comm.all_reduce_sum(per_class)
    n = int(hits[-1])
    metrics = {}
    for k, h in zip(ks, hits[:-1].tolist()):
        # CLIP_benchmark: acc5 only with >= 5 classes, else NaN
        metrics[f"acc{k}"] = h / n if n and num_classes >= k else math.nan
    support, correct = per_class[0].cpu().numpy(), per_class[1].cpu().numpy()
    present = support > 0
    recall = correct[present].astype(np.float64) / support[present]
    metrics["mean_per_class_recall"] = float(np.mean(recall)) if present.any() else math.nan
    return metrics


def chance_levels(num_classes: int, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """A random guess: acc@k = min(k, C)/C (NaN where the metric is), mean per-class recall = 1/C."""
    out = {f"acc{k}": (min(k, num_classes) / num_classes if num_classes >= k else math.nan)
           for k in sorted(set(ks) | {1})}
    out["mean_per_class_recall"] = 1 / num_classes
    return out
