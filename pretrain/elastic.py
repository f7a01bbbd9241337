"""Elastic resume: a checkpoint written by N ranks resumes on M != N ranks at ZeRO-1/2/3.

DeepSpeed's checkpoint holds each rank's partition of the fp32 master weights and Adam moments, laid out for
N ranks, and 0.19.7 refuses it on another world size (ZeRORuntimeException). So every checkpoint at ZeRO >= 1
also carries the run's consolidated state (`checkpoint.elastic`, on by default), written by rank 0 into the
checkpoint folder before its checksums and rename (pretrain/checkpoint.py), so it is as atomic and verified
as the rest:

    <tag>/consolidated.pt   {"world_size", "params": name -> full fp32 master, "moments": key -> name -> full
                             tensor (Adam's exp_avg, exp_avg_sq), "step": the optimizer's step count,
                             "engine": DeepSpeed's step counters, "ema": the EMA's full shadow or None}

A resume on the world size that saved keeps DeepSpeed's own load (bit-exact); on another it loads this file
into the freshly built engine: masters and moments through DeepSpeed's safe_set_* helpers (each rank
keeps its new partition: `set_full`), the bf16/fp32 working copies refreshed from the masters. Trainer state, data
position and schedule come from trainer_state.json as on any resume; RNG states of ranks that did not exist
before stay as seeded.

Not DeepSpeed's universal checkpoint (ds_to_universal + load_universal): it needs a conversion pass over the
whole checkpoint when the job restarts, covers no EMA, and its 0.19.7 ZeRO-3 loader copies param group 0's
hyperparameters into every group (clipforge's no-decay groups would get weight decay).

Cost per checkpoint: one gather of the weights and of each moment (like the export's), and a file of 3x the
fp32 weights on rank 0 (about the size of DeepSpeed's optimizer files).
"""
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from clipforge.modeling.config import ConfigError
from clipforge.pretrain.rundir import CONSOLIDATED


def _trainable(engine) -> List[Tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in engine.module.named_parameters() if p.requires_grad]


def _base_optimizer(engine) -> torch.optim.Optimizer:
    """The torch AdamW inside DeepSpeed's ZeRO optimizer; its state is keyed by the flat fp32 partitions."""
    return engine.optimizer.optimizer


def _moment_keys_and_step(engine) -> Tuple[List[str], Optional[torch.Tensor]]:
    """Adam's per-element state keys and its step count, the same on every rank (a rank whose partition is
    empty may hold no state). ([], None): no step taken yet."""
    keys, step = set(), None
    for state in _base_optimizer(engine).state.values():
        keys |= {k for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0}
        if "step" in state:
            step = torch.as_tensor(state["step"]).detach().clone()
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (sorted(keys), step))
    keys = sorted({k for ks, _ in everyone for k in ks})
    return keys, next((s for _, s in everyone if s is not None), None)


def _link_state_views(engine) -> None:
    """ZeRO-1/2: DeepSpeed 0.19.7 links each parameter's views of Adam's state once, right after the FIRST
    param group's first step, when the other groups have no state yet, so their parameters get none
    (safe_get_full_optimizer_state: "exp_avg not found in optimizer state fragment"). Linked again here, when
    every group has its state. ZeRO-3 reads the optimizer's state directly."""
    optimizer = engine.optimizer
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def gather(engine, ema_state: Optional[Callable[[], dict]] = None) -> Optional[dict]:
    """Every rank calls it (the gathers are collectives); -> the consolidated state on rank 0, None elsewhere.
    ema_state: ModelEMA.full_state (a collective too), or None without an EMA."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    keep = dist.get_rank() == 0
    keys, step = _moment_keys_and_step(engine)
    if keys:
        _link_state_views(engine)
    params: Dict[str, torch.Tensor] = {}
    moments: Dict[str, Dict[str, torch.Tensor]] = {key: {} for key in keys}
    for name, param in _trainable(engine):
        full = safe_get_full_fp32_param(param)
        if keep:
            params[name] = full.detach().float().cpu().clone()
        for key in keys:
            full = safe_get_full_optimizer_state(param, key)
            if keep:
                moments[key][name] = full.detach().float().cpu().clone()
    ema = ema_state() if ema_state is not None else None
    if not keep:
        return None
    return {"world_size": dist.get_world_size(), "params": params, "moments": moments, "step": step,
            "engine": {"global_steps": engine.global_steps, "global_samples": engine.global_samples,
                       "skipped_steps": engine.skipped_steps},
            "ema": ema}


def _create_optimizer_state(engine, keys: List[str], step: torch.Tensor) -> None:
    """AdamW's state is created lazily by its first step; a fresh engine has none to write the moments into:
    zeros of each flat partition's shape, to which DeepSpeed's per-parameter views are then linked."""
    optimizer = _base_optimizer(engine)
    zero = engine.optimizer  # the flat fp32 partitions AdamW steps (ZeRO-3 hands it one sub-group at a time)
    for flat in getattr(zero, "fp32_partitioned_groups_flat", None) or zero.single_partition_of_fp32_groups:
        state = optimizer.state[flat]
        state["step"] = step.clone()
        for key in keys:
            if key not in state:
                state[key] = torch.zeros_like(flat)
    _link_state_views(engine)


def _refresh_working_weights(engine, params: Dict[str, torch.Tensor]) -> None:
    """The forward reads the working copies (fp32 or bf16), which DeepSpeed refreshes from the masters only in
    its optimizer step. ZeRO-1/2: every rank holds the whole parameter; ZeRO-3: the flat partition, copied
    from the fp32 one as DeepSpeed's own universal loader does (the same tensor in clipforge's fp32 build)."""
    optimizer = engine.optimizer
    if hasattr(optimizer, "fp16_partitioned_groups_flat"):  # ZeRO-3
        for working, master in zip(optimizer.fp16_partitioned_groups_flat, optimizer.fp32_partitioned_groups_flat):
            if working is not None and master.numel() > 0:
                working.data.copy_(master.data)
        return
    with torch.no_grad():
        for name, param in _trainable(engine):
            param.data.copy_(params[name].to(param.device).view_as(param))


def set_full(param: torch.nn.Parameter, value: torch.Tensor, key: Optional[str] = None) -> None:
    """This rank's share of `value`, the full fp32 master (key None) or Adam state `key` of `param`. DeepSpeed's
    safe_set_full_* at ZeRO-3 reads past the end of the value on a rank whose partition is padding (0.19.7;
    the 0-dim logit_scale on 2 ranks: "start (1) + length (1) exceeds dimension size (1)"), so there this
    rank's partition is cut here, zero-padded as DeepSpeed pads it, and set as the local one."""
    from deepspeed.utils import (safe_set_full_fp32_param, safe_set_full_optimizer_state, safe_set_local_fp32_param,
                                 safe_set_local_optimizer_state)

    if not hasattr(param, "ds_id"):  # ZeRO-1/2: each rank copies its fragment's range, padding never read
        if key is None:
            safe_set_full_fp32_param(param, value)
        else:
            safe_set_full_optimizer_state(param, value, key)
        return
    size = param.ds_tensor.numel()
    piece = value.flatten()[size * param._z3_optimizer._get_param_partition_rank(param):][:size]
    local = torch.zeros(size, dtype=torch.float32, device=value.device)
    local[:piece.numel()] = piece
    if key is None:
        safe_set_local_fp32_param(param, local)
    else:
        safe_set_local_optimizer_state(param, local, key)


def load(engine, path: str) -> dict:
    """Loads <path>/consolidated.pt into the engine (every rank; no collective); -> the saved state (its "ema"
    for ModelEMA.load_full_state)."""
    saved = torch.load(os.path.join(path, CONSOLIDATED), map_location="cpu", weights_only=True, mmap=True)
    named = dict(_trainable(engine))
    if set(named) != set(saved["params"]):
        raise ConfigError(f"{path}: its consolidated state holds other parameters than this run trains "
                          f"({len(saved['params'])} vs {len(named)}); resume with the saved model and locks")
    device = engine.device
    for name, param in named.items():
        set_full(param, saved["params"][name].to(device))
    if saved["step"] is not None:
        _create_optimizer_state(engine, sorted(saved["moments"]), saved["step"])
        for key, values in saved["moments"].items():
            for name, param in named.items():
                set_full(param, values[name].to(device), key)
    _refresh_working_weights(engine, saved["params"])
    for counter, value in saved["engine"].items():
        setattr(engine, counter, value)
    return saved
