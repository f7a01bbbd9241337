"""Wires one training run together (one process = one rank):

    config -> process group -> model -> engine -> loader -> [resume] -> train loop -> checkpoint -> export

`data_factory(cfg, dist, bundle, state) -> loader` is injectable (tests use in-memory batches); the
default is data_pipeline.stream.build_train_loader. A loader is iterable (one epoch per `for`) and has
state_dict() and counters.
"""
import json
import math
import os
import random
import sys
from typing import Callable, Optional

import numpy as np
import torch

from clipforge.atomic import write_atomic
from clipforge.errors import UserFileNotFound
from clipforge.pretrain.checkpoint import (EXIT_SAVE_FAILED, CheckpointDamaged, CheckpointManager, CheckpointSaveFailed,
                                 PreemptionFlag, tag_for)
from clipforge.modeling.config import RunConfig, check_batch_split, save_config
from clipforge.pretrain.distill import setup_distillation
from clipforge.pretrain.distributed import init_distributed
from clipforge.pretrain.engine import build_engine
from clipforge.pretrain.elastic import gather as gather_consolidated
from clipforge.pretrain.ema import EMAEvalCopy, ModelEMA
from clipforge.pretrain.export import export_model, frozen_fp32
from clipforge.pretrain.feed import DataFeed
from clipforge.pretrain.loss import build_loss
from clipforge.pretrain.metrics import MetricsLogger, eval_line
from clipforge.pretrain.precision import resolve_precision
from clipforge.modeling.model import build_model
from clipforge.pretrain.text_cache import ensure_text_store
from clipforge.pretrain.rundir import already_done
from clipforge.pretrain.stages import StageSwitch
from clipforge.pretrain.train import Trainer, train_loop


def stream_loader(cfg: RunConfig, dist, bundle, state: Optional[dict]):
    from clipforge.data_pipeline.stream import build_train_loader

    return build_train_loader(cfg.data, seed=cfg.train.seed, global_batch_size=cfg.train.global_batch_size,
                              rank=dist.rank, world_size=dist.world_size, image_size=bundle.image_size,
                              tokenizer=bundle.tokenizer, state=state, drop_last=True,
                              text_store=bundle.text_store, teacher=bundle.teacher_inputs,
                              device=dist.device)  # pinned batches on CUDA; data.decode=gpu decodes there


def total_steps(cfg: RunConfig, loader) -> int:
    if cfg.train.steps is not None:
        return cfg.train.steps
    if cfg.train.samples is not None:
        return math.ceil(cfg.train.samples / cfg.train.global_batch_size)
    return math.ceil(cfg.train.epochs * loader.steps_per_epoch)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _resume_path(cfg: RunConfig, checkpoints: CheckpointManager) -> Optional[str]:
    """None: fresh start. No --resume: auto-resume the run dir's newest intact checkpoint (a requeued job
    continues; a damaged latest is passed over with a warning). A named checkpoint must be intact."""
    resume = cfg.checkpoint.resume
    if resume is None or resume == "latest":
        path = checkpoints.intact_latest()
        if path is None and checkpoints.latest_tag() is not None:
            raise CheckpointDamaged(f"{checkpoints.dir}: no intact checkpoint (see the warnings above); give "
                                    f"checkpoint.resume=PATH of a good copy, or a new train.run_dir")
        return path
    if not os.path.isdir(resume):
        raise UserFileNotFound(f"checkpoint.resume={resume!r}: no such checkpoint folder")
    checkpoints.check_intact(resume)
    return resume


def _save_failed(err: CheckpointSaveFailed, rank: int) -> int:
    if rank == 0:
        print(f"stopping: {err} (exit {EXIT_SAVE_FAILED})", file=sys.stderr)
    return EXIT_SAVE_FAILED


def logged_eval(evaluator: Optional[Callable], cfg: RunConfig, engine, bundle, dist, writer,
                ema_copy: Optional[EMAEvalCopy] = None):
    """evaluator(cfg, model, bundle, device) -> evaluate(step) -> result or None (handed in from above:
    the factory eval.evaluator names, resolved by pretrain/cli.py; the result is the JSON object `clipforge
    eval --out` writes). -> evaluate(step) -> metrics that also writes the result to RUN/eval/stepN.json,
    tensorboard (eval/...) and one log line on rank 0. None without an eval. ema_copy (eval.ema): the EMA
    weights are evaluated too, into RUN/eval-ema/stepN.json and tensorboard's eval_ema/..."""
    evaluate = evaluator(cfg, engine, bundle, dist.device) if evaluator is not None else None
    if evaluate is None:
        return None
    evaluate_ema = evaluator(cfg, ema_copy.model, bundle, dist.device) if ema_copy is not None else None

    def write(result: dict, step: int, folder: str, label: str) -> None:
        if dist.rank == 0:
            os.makedirs(os.path.join(cfg.train.run_dir, folder), exist_ok=True)
            write_atomic(os.path.join(cfg.train.run_dir, folder, f"{tag_for(step)}.json"),
                         json.dumps(result, indent=2) + "\n")
            for key, value in result["metrics"].items():
                writer.add_scalar(f"{folder.replace('-', '_')}/{key}", value, step)
            print(eval_line(step, result["metrics"], label), file=sys.stderr)

    def evaluate_and_log(step: int) -> dict:
        result = evaluate(step)
        write(result, step, "eval", "eval")
        if evaluate_ema is not None:
            ema_copy.refresh()
            write(evaluate_ema(step), step, "eval-ema", "eval EMA")
        return result["metrics"]
    return evaluate_and_log


def run(cfg: RunConfig, data_factory: Callable = stream_loader, loss_wrapper: Callable = None,
        run_info: Optional[dict] = None, evaluator: Optional[Callable] = None) -> int:
    """loss_wrapper(loss_fn) -> loss_fn: a test hook to inject faults into the real loss. run_info (version,
    git commit, overrides) is recorded in RUN/config.yaml. evaluator: the periodic eval's factory (see
    logged_eval); None = no eval during training."""
    dist = init_distributed(cfg.train.device)
    rank, world = dist.rank, dist.world_size
    accum = check_batch_split(cfg, world)
    run_dir = cfg.train.run_dir
    precision, why = resolve_precision(cfg.deepspeed.precision, dist.device)
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        save_config(cfg, os.path.join(run_dir, "config.yaml"), dict(run_info or {}, precision=precision))
        if cfg.deepspeed.precision == "auto":
            print(f"deepspeed.precision: {precision} ({why})", file=sys.stderr)
        restarts = os.environ.get("SLURM_RESTART_COUNT")
        if restarts is not None:
            print(f"SLURM_RESTART_COUNT={restarts}", file=sys.stderr)
    cfg.deepspeed.precision = precision  # everything below (engine, export, periodic eval) sees the resolved one
    _seed_all(cfg.train.seed)  # identical initial weights on every rank
    bundle = build_model(cfg.model, cfg.loss, cfg.train.stages)
    # Before the engine: under ZeRO-3 the tower's parameters are partitioned afterwards.
    bundle.model.to(dist.device)
    stages = StageSwitch.install(cfg, bundle, rank)  # train.stages: the model runs every stage's size
    bundle.text_store = ensure_text_store(cfg, bundle, rank, world, dist.device)
    distill = setup_distillation(cfg, dist.device)  # loss.distill: the live teacher, or its store's identity
    bundle.teacher_inputs = distill.inputs if distill is not None else None
    frozen = frozen_fp32(bundle.model) if cfg.deepspeed.precision != "fp32" else None
    engine, base_lrs = build_engine(cfg, bundle.model, dist, accum, run_dir)
    _seed_all(cfg.train.seed + rank)  # per-rank dropout / patch-dropout masks
    checkpoints = CheckpointManager(run_dir, cfg.checkpoint.every_steps, cfg.checkpoint.every_minutes,
                                    cfg.checkpoint.keep_last, rank)
    state = {"step": 0, "samples_seen": 0, "nonfinite_total": 0, "nonfinite_consecutive": 0, "overflow_total": 0,
             "rollbacks": 0, "recent_losses": []}
    data_state = None
    ema = ModelEMA(engine, cfg.model.ema_decay) if cfg.model.ema_decay is not None else None
    if ema is not None:
        checkpoints.per_rank["ema"] = ema.state_dict
    if cfg.deepspeed.zero_stage >= 1 and cfg.checkpoint.elastic:  # resumable on another world size
        checkpoints.consolidate = lambda: gather_consolidated(engine, ema.full_state if ema is not None else None)
    path = _resume_path(cfg, checkpoints)
    if path is not None:
        saved = checkpoints.load(engine, path)
        data_state = saved.pop("data", None)
        state.update({k: saved.get(k, v) for k, v in state.items()})  # a key absent before it was counted
        if ema is not None and not checkpoints.restore_ema(ema, path) and state["step"] > 0:
            # EMA switched on mid-run: it starts from these weights
            ema = ModelEMA(engine, cfg.model.ema_decay)
            checkpoints.per_rank["ema"] = ema.state_dict
        if rank == 0:
            print(f"resumed from {path} at step {state['step']} ({state['samples_seen']} samples seen)",
                  file=sys.stderr)
    # Before the loader forks its workers: they inherit the handler, so a SIGUSR1 sent to every process
    # of the job (scancel --signal=USR1) does not kill them.
    preempt = PreemptionFlag()
    # The loader of the next step's stage (train.stages: its image size and tokenizer), at the saved position.
    feed = DataFeed(lambda saved_data: data_factory(
        cfg, dist, stages.loader_bundle(state["step"]) if stages else bundle, saved_data), data_state)
    loader = feed.loader
    total = total_steps(cfg, loader)
    if path is not None and state["step"] >= total:   # finished (epochs: known only now): no re-export
        if rank == 0:
            print(f"clipforge pretrain: {already_done(state['step'], total)}", file=sys.stderr)
        return 0
    loss_fn = build_loss(cfg.loss, rank, world)
    if distill is not None:
        loss_fn = distill.loss(loss_fn, rank, world)
    if loss_wrapper is not None:
        loss_fn = loss_wrapper(loss_fn)
    metrics = MetricsLogger(run_dir, rank, world, dist.device, bundle.model_cfg)
    metrics.set_progress(total, state["step"], state["samples_seen"], cfg.train.global_batch_size,
                         loader.steps_per_epoch)
    ema_copy = EMAEvalCopy(ema, lambda: build_model(cfg.model, cfg.loss, cfg.train.stages).model, dist.device,
                           frozen) \
        if ema is not None and cfg.eval.ema and evaluator is not None else None
    evaluate = logged_eval(evaluator, cfg, engine, bundle, dist, metrics.writer, ema_copy)
    trainer = Trainer(cfg=cfg, engine=engine, loss_fn=loss_fn, base_lrs=base_lrs, accum=accum,
                      total_steps=total, mean=bundle.preprocess_cfg["mean"],
                      std=bundle.preprocess_cfg["std"], checkpoints=checkpoints, metrics=metrics,
                      preempt=preempt, evaluate=evaluate, ema=ema, stages=stages,
                      distill=distill)
    try:
        code = train_loop(trainer, feed, state)
        if code == 0 and evaluate is not None and not (cfg.eval.every_steps and state["step"] % cfg.eval.every_steps == 0):
            evaluate(state["step"])  # the final model is always evaluated when there is a val set
    except CheckpointSaveFailed as err:
        code = _save_failed(err, rank)
    finally:
        metrics.close()
    if code == 0:
        if checkpoints.last_tag != tag_for(state["step"]):
            try:
                checkpoints.save(engine, dict(state, data=feed.state_dict()))
            except CheckpointSaveFailed as err:
                return _save_failed(err, rank)
        if cfg.checkpoint.export_at_end:
            export_model(engine, bundle.model_cfg, bundle.preprocess_cfg, run_dir, frozen=frozen)
            if ema is not None:
                with ema.swapped_in():
                    export_model(engine, bundle.model_cfg, bundle.preprocess_cfg, run_dir, "export-ema", model_pt=False,
                                 frozen=frozen)
            if rank == 0:
                print(f"exported {os.path.join(run_dir, 'model.pt')} and {os.path.join(run_dir, 'export')}"
                      + (f" (EMA: {os.path.join(run_dir, 'export-ema')})" if ema is not None else ""), file=sys.stderr)
    return code
