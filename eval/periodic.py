"""The eval the train loop runs every `eval.every_steps` and at the end: CLIP_benchmark retrieval metrics of
the live engine on `data.val_path` (every rank embeds its share; any ZeRO stage).

It is handed to the train loop from above: pretrain/cli.py (the application entry point, the one place
that wires eval into training) passes `retrieval_evaluator` to `pretrain.run.run(evaluator=...)`, so no
other pretrain module imports eval and eval imports nothing of pretrain. pretrain writes what it returns
into RUN/eval/stepN.json, tensorboard and the log.

    evaluate = retrieval_evaluator(cfg, engine, bundle, device)   # None without data.val_path
    result = evaluate(step)   # the JSON `clipforge eval --out` writes (CLIP_benchmark's layout), step in it
"""
from typing import Any, Callable, Dict, Optional

from clipforge.modeling.config import RunConfig
from clipforge.modeling.model import ModelBundle

Evaluate = Callable[[int], Dict[str, Any]]


def retrieval_evaluator(cfg: RunConfig, model, bundle: ModelBundle, device) -> Optional[Evaluate]:
    """-> evaluate(step) -> the result object of `clipforge eval` (eval.report.result_json: metrics, and
    chance levels, counts and the step under "clipforge"). None without a val set. `model`: the DeepSpeed
    engine (or anything modeling.model.open_clip_module unwraps)."""
    if not cfg.data.val_path:
        return None
    from clipforge.eval.api import run_retrieval
    from clipforge.eval.report import result_json

    def evaluate(step: int) -> Dict[str, Any]:
        result = run_retrieval(model, bundle.tokenizer, bundle.preprocess_cfg, cfg.data.val_path,
                               recall_k=cfg.eval.recall_k, batch_size=cfg.eval.batch_size, workers=cfg.eval.workers,
                               device=str(device),
                               precision=cfg.deepspeed.precision)  # the weights' dtype: bf16/fp16 need autocast
        return result_json(result, cfg.data.val_path, cfg.model.name, f"training step {step}",
                           {"step": step, "precision": cfg.deepspeed.precision})
    return evaluate
