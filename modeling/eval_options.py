"""The retrieval eval's options, defined once (torch-free): `clipforge eval`'s flags (eval/cli.py builds them from
these fields) and the run config's `eval.*` keys (EvalConfig, which the trainer's periodic eval reads) are the
same fields, with the same names, defaults and help.

    clipforge eval ... --batch-size 128 --recall-k 1 5 --workers 4
    clipforge pretrain ... eval.batch_size=128 eval.recall_k=[1,5] eval.workers=4
"""
from dataclasses import dataclass
from typing import List

from clipforge.dataclass_cli import option

RECALL_K = [1, 5, 10]   # CLIP_benchmark's default


@dataclass
class EvalOptions:
    # on the command line k values may come as "1,5,10" or "1 5 10" (eval/cli.py parses them)
    recall_k: List[int] = option(RECALL_K, "retrieval: k values, comma- or space-separated (default "
                                 f"{','.join(map(str, RECALL_K))})", nargs="+")
    batch_size: int = option(256, "images (and captions) per forward pass, per rank (default %(default)s)")
    workers: int = option(0, "image decode worker processes per rank")


@dataclass
class EvalConfig(EvalOptions):
    """The run config's eval.* keys: the eval options plus when the trainer runs it, and which eval it runs."""
    # Periodic retrieval eval on data.val_path every N steps; 0 = only at the end (if val_path).
    every_steps: int = 0
    # Also evaluate the model EMA (needs model.ema_decay) at every periodic eval, into RUN/eval-ema/stepN.json.
    ema: bool = False
    # The periodic eval's factory, "module:function", imported at run start (pretrain/evaluator.py): the
    # application names it, so pretrain imports no eval package. Checked before any process starts.
    evaluator: str = "clipforge.eval.periodic:retrieval_evaluator"
