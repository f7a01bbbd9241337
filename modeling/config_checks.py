"""Validation of the run config (modeling/config.py's dataclasses): the allowed values of its choice keys and
`validate`, the cross-field checks load_config runs on every config. Torch-free like the config itself;
every error is one line naming the key(s) and the fix, raised as ConfigError before any process starts.
"""
import os
from typing import Sequence

from clipforge.errors import UserError

LOSS_KINDS = ("infonce", "siglip")
LOSS_IMPLS = ("naive", "tiled")
SCHEDULES = ("cosine", "constant", "linear")
DEVICES = ("auto", "cpu", "cuda")
RUN_LENGTH_KEYS = ("steps", "samples", "epochs")
ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class ConfigError(UserError, ValueError):
    """A config file or override is wrong; the message says which key and what to do."""


def _choice(key: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: allowed values are {', '.join(map(str, allowed))}")


def _check_optim_ranges(optim) -> None:
    """Layer-wise lr decay in (0, 1] (1 = every layer at the tower's lr); weight decays >= 0."""
    for key in ("layer_decay", "layer_decay_image", "layer_decay_text"):
        value = getattr(optim, key)
        if value is not None and not 0 < value <= 1:
            raise ConfigError(f"optim.{key}={value}: must be in (0, 1], e.g. 0.75, or null (off)")
    for key in ("weight_decay", "weight_decay_image", "weight_decay_text"):
        value = getattr(optim, key)
        if value is not None and value < 0:
            raise ConfigError(f"optim.{key}={value}: must be >= 0" + ("" if key == "weight_decay" else
                                                                       " or null (= optim.weight_decay)"))


def _check_divergence(train) -> None:
    """The divergence and rollback keys (pretrain/rollback.py)."""
    if train.max_nonfinite_steps < 1:
        raise ConfigError(f"train.max_nonfinite_steps={train.max_nonfinite_steps}: must be >= 1")
    if train.spike_factor is not None and not train.spike_factor > 1:
        raise ConfigError(f"train.spike_factor={train.spike_factor}: must be > 1 (a loss that many times the "
                          "recent median counts as a spike), e.g. 3, or null (off)")
    if train.spike_window < 1:
        raise ConfigError(f"train.spike_window={train.spike_window}: must be >= 1 (losses in the running median)")
    if train.max_rollbacks < 0:
        raise ConfigError(f"train.max_rollbacks={train.max_rollbacks}: must be >= 0 (0 = stop at the first divergence)")
    if train.skip_batches_after_rollback is not None and train.skip_batches_after_rollback < 0:
        raise ConfigError(f"train.skip_batches_after_rollback={train.skip_batches_after_rollback}: must be >= 0, "
                          "or null (skip the batches since the checkpoint)")


def _check_hard_negatives(cfg) -> None:
    """data.hard_negatives (NegCLIP) is implemented for the naive InfoNCE (global or local, several positives too)."""
    k = cfg.data.hard_negatives
    if k == 0:
        return
    if cfg.loss.kind != "infonce" or cfg.loss.impl != "naive":
        raise ConfigError(f"data.hard_negatives={k} needs loss.kind=infonce loss.impl=naive (got {cfg.loss.kind}, "
                          f"{cfg.loss.impl}); set those, or data.hard_negatives=0")
    # modeling/model.py text_is_cacheable (torch-free here): a store holds KEY.txt's captions, not the negatives.
    cached = cfg.model.hf_text_dir is not None and cfg.model.lock_text and cfg.model.lock_text_unlocked_layers == 0
    if cached and cfg.model.text_cache:
        raise ConfigError(f"data.hard_negatives={k} needs the live text tower, but model.text_cache stores KEY.txt's "
                          "captions only; set model.text_cache=false, or data.hard_negatives=0")


def _check_distill(cfg) -> None:
    """loss.distill (pretrain/distill_loss.py): the KL of two softmax similarity distributions over the global batch."""
    d = cfg.loss.distill
    if d.teacher is None:
        return
    path = d.teacher[len("local-dir:"):] if d.teacher.startswith("local-dir:") else d.teacher
    if not os.path.exists(path):
        raise ConfigError(f"loss.distill.teacher={d.teacher!r}: no such model (give what `clipforge eval --model` "
                          "accepts: local-dir:DIR, an export dir, a run dir, a checkpoint dir or a model.pt)")
    if not 0 < d.weight <= 1:
        raise ConfigError(f"loss.distill.weight={d.weight}: must be in (0, 1] (loss = (1 - w) InfoNCE + w KD)")
    if d.temperature is not None and not d.temperature > 0:
        raise ConfigError(f"loss.distill.temperature={d.temperature}: must be > 0, or null (the teacher's own logit scale)")
    if cfg.loss.kind != "infonce" or cfg.loss.impl != "naive":
        raise ConfigError(f"loss.distill needs loss.kind=infonce loss.impl=naive (got {cfg.loss.kind}, {cfg.loss.impl}): "
                          "its KL is over the softmax rows of the materialised batch logits; set those, or "
                          "loss.distill.teacher=null")
    if cfg.data.hard_negatives:
        raise ConfigError(f"loss.distill with data.hard_negatives={cfg.data.hard_negatives}: the teacher scores the "
                          "batch's captions only; set data.hard_negatives=0, or loss.distill.teacher=null")
    if d.stored and cfg.data.caption_weights is not None:
        raise ConfigError("loss.distill.stored=true reads the teacher's embeddings of KEY.txt's captions only, but "
                          "data.caption_weights draws other caption sources; set data.caption_weights=null or "
                          "loss.distill.stored=false")


def _check_stages(cfg) -> None:
    """train.stages (progressive resolution): each stage's own ranges, and train.steps = their sum (the lr schedule
    spans the whole run). What needs the model's config (patch size, towers) is modeling/stages.py's resolve_stages."""
    stages, model = cfg.train.stages, cfg.model
    cached = model.hf_text_dir is not None and model.lock_text and model.lock_text_unlocked_layers == 0
    for i, stage in enumerate(stages):
        key = f"train.stages[{i}]"
        if stage.steps < 1:
            raise ConfigError(f"{key}.steps={stage.steps}: every stage needs steps >= 1")
        if stage.image_size is not None and stage.image_size < 1:
            raise ConfigError(f"{key}.image_size={stage.image_size}: must be >= 1, or null (the model's)")
        if stage.context_length is not None and stage.context_length < 2:
            raise ConfigError(f"{key}.context_length={stage.context_length}: must be >= 2 (start and end of text), "
                              "or null (the model's)")
        if stage.patch_dropout is not None and not 0 <= stage.patch_dropout < 1:
            raise ConfigError(f"{key}.patch_dropout={stage.patch_dropout}: must be in [0, 1), or null "
                              "(model.patch_dropout)")
        if stage.context_length is not None and cached and model.text_cache:
            raise ConfigError(f"{key}.context_length={stage.context_length}: model.text_cache stores the locked text "
                              "tower's outputs at one context length; set model.text_cache=false, or drop the key")
    total = sum(stage.steps for stage in stages)
    if stages and cfg.train.steps != total:
        given = f"train.steps={cfg.train.steps}" if cfg.train.steps is not None else \
            f"the run length is given as train.{'samples' if cfg.train.samples is not None else 'epochs'}"
        raise ConfigError(f"train.stages' steps add up to {total}, but {given}: train.steps is the whole run "
                          f"(the lr schedule spans every stage); set train.steps={total}")


DECODE_NEEDS_CUDA = ("data.decode=gpu decodes the train images on the rank's CUDA device, and {why}; run on a GPU "
                     "node, or set data.decode=cpu (the loader workers decode them)")


def check_decode_device(cfg, cuda_found: bool) -> None:
    """data.decode=gpu on a rank whose train.device (auto, cuda) finds no CUDA device (cuda_found: torch's answer):
    `clipforge pretrain` asks on every rank before the process group starts; train.device=cpu is refused by validate."""
    if cfg.data.decode == "gpu" and cfg.train.device != "cpu" and not cuda_found:
        raise ConfigError(DECODE_NEEDS_CUDA.format(why=f"train.device={cfg.train.device} finds no CUDA device here"))


def validate(cfg) -> None:
    """cfg: a RunConfig. Choice keys, ranges and cross-field checks; every message names the key(s) and the fix."""
    try:
        cfg.data.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _choice("loss.kind", cfg.loss.kind, LOSS_KINDS)
    _choice("loss.impl", cfg.loss.impl, LOSS_IMPLS)
    _choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    _choice("deepspeed.zero_stage", cfg.deepspeed.zero_stage, ZERO_STAGES)
    _choice("deepspeed.precision", cfg.deepspeed.precision, PRECISIONS)
    _choice("train.device", cfg.train.device, DEVICES)
    # open_clip #616/#894: local loss without gather-with-grad silently trains on a wrong gradient.
    if cfg.loss.local_loss and not cfg.loss.gather_with_grad:
        raise ConfigError("loss.local_loss=true needs loss.gather_with_grad=true (otherwise the gradient is "
                          "missing the cross-rank terms); set loss.gather_with_grad=true or loss.local_loss=false")
    if cfg.loss.kind == "siglip" and cfg.loss.impl == "tiled":
        raise ConfigError("loss.impl=tiled is implemented for loss.kind=infonce only; use loss.impl=naive with siglip")
    if cfg.model.ema_decay is not None and not 0 < cfg.model.ema_decay < 1:
        raise ConfigError(f"model.ema_decay={cfg.model.ema_decay}: must be in (0, 1), e.g. 0.999, or null (off)")
    if cfg.eval.ema and (cfg.model.ema_decay is None or not cfg.data.val_path):
        raise ConfigError("eval.ema=true evaluates the model EMA on data.val_path: set model.ema_decay (e.g. 0.999) "
                          "and data.val_path, or eval.ema=false")
    if cfg.data.captions_per_sample > 1 and (cfg.loss.local_loss or cfg.loss.impl == "tiled"):
        raise ConfigError(f"data.captions_per_sample={cfg.data.captions_per_sample} needs the global naive loss "
                          "(its positives span ranks); set loss.local_loss=false loss.impl=naive, or "
                          "data.captions_per_sample=1")
    _check_hard_negatives(cfg)
    _check_distill(cfg)
    if cfg.data.decode == "gpu" and cfg.train.device == "cpu":  # auto, cuda: check_decode_device at the rank's start
        raise ConfigError(DECODE_NEEDS_CUDA.format(why="train.device=cpu"))
    if cfg.loss.tile_size < 1:
        raise ConfigError(f"loss.tile_size={cfg.loss.tile_size}: must be >= 1")
    lengths = [k for k in RUN_LENGTH_KEYS if getattr(cfg.train, k) is not None]
    if len(lengths) != 1:
        raise ConfigError(f"give exactly one of train.steps, train.samples, train.epochs (got {lengths or 'none'}); "
                          "set the others to null, e.g. train.epochs=null train.steps=100")
    _check_stages(cfg)
    if cfg.data.mode == "resampled" and cfg.train.epochs is not None:
        raise ConfigError("train.epochs needs data.mode=epoch; with data.mode=resampled give train.steps or train.samples")
    if cfg.train.global_batch_size < 1:
        raise ConfigError(f"train.global_batch_size={cfg.train.global_batch_size}: must be >= 1")
    if cfg.train.micro_batch_size is not None and cfg.train.micro_batch_size < 1:
        raise ConfigError(f"train.micro_batch_size={cfg.train.micro_batch_size}: must be >= 1 or null")
    _check_optim_ranges(cfg.optim)
    _check_divergence(cfg.train)
    if cfg.optim.grad_clip < 0:
        raise ConfigError(f"optim.grad_clip={cfg.optim.grad_clip}: must be >= 0 (0 = off)")
    if not 0 <= cfg.model.patch_dropout < 1:
        raise ConfigError(f"model.patch_dropout={cfg.model.patch_dropout}: must be in [0, 1)")
    if cfg.deepspeed.offload_param and cfg.deepspeed.zero_stage != 3:
        raise ConfigError("deepspeed.offload_param=true needs deepspeed.zero_stage=3")
    if cfg.deepspeed.offload_optimizer and cfg.deepspeed.zero_stage == 0:
        raise ConfigError("deepspeed.offload_optimizer=true needs deepspeed.zero_stage >= 1")
    if cfg.model.hf_text_dir is not None and not os.path.isdir(cfg.model.hf_text_dir):
        raise ConfigError(f"model.hf_text_dir={cfg.model.hf_text_dir!r}: no such directory "
                          "(a local Hugging Face model folder: config, weights and tokenizer)")
