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
    if cfg.loss.tile_size < 1:
        raise ConfigError(f"loss.tile_size={cfg.loss.tile_size}: must be >= 1")
    lengths = [k for k in RUN_LENGTH_KEYS if getattr(cfg.train, k) is not None]
    if len(lengths) != 1:
        raise ConfigError(f"give exactly one of train.steps, train.samples, train.epochs (got {lengths or 'none'}); "
                          "set the others to null, e.g. train.epochs=null train.steps=100")
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
