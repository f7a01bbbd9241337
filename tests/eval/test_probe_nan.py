"""A diverged linear probe must not score 100 %. CLIP_benchmark's weight-decay grid goes up to 1e2 with
AdamW at lr 0.1: from wd = 20 on, the decoupled decay (1 - lr * wd) grows the weights every step, they
overflow and every logit is NaN. `eval.classification.ranks_from_logits` then counts each NaN row as a hit
(NaN > own and NaN == own are both False: rank 0), so the sweep picks the diverged value (val acc1 1.0) and
the test acc1 is 1.0: seen on scikit-learn's digits (configs/eval/demo.yaml's digits-probe) with a random
tiny model (sklearn's LogisticRegression on the same features: 27 %). CLIP_benchmark ranks NaN as the
largest logit (torch.topk / argmax), so a NaN row predicts class 0 there.
ranks_from_logits now ranks NaN as +inf, lower index first on ties: argmax's choice."""
import torch

from clipforge.eval.classification import ranks_from_logits
from clipforge.eval.probe import ProbeConfig, linear_probe

def test_nan_logits_rank_as_the_largest_lower_index_first():
    logits = torch.full((10, 10), float("nan"))
    labels = torch.arange(10)
    assert ranks_from_logits(logits, labels).tolist() == list(range(10))  # argmax: class 0 for every row
    assert (ranks_from_logits(logits, labels) == 0).sum() == (logits.argmax(1) == labels).sum()


def test_a_probe_diverging_at_large_weight_decay_scores_near_chance_not_100():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(1400, 16, generator=g), dim=1)
    y = torch.randint(0, 10, (1400,), generator=g)  # random labels: nothing to learn
    metrics, tried = linear_probe(x[:1000], y[:1000], x[1200:], y[1200:], 10, val=(x[1000:1200], y[1000:1200]),
                                  cfg=ProbeConfig(epochs=10))  # 160 steps: wd 46 overflows (|1 - 4.6| ** 160)
    assert max(tried.values()) < 0.5 and metrics["acc1"] < 0.5, (metrics, tried)
