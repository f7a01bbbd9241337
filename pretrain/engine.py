"""DeepSpeed engine: the ONE place where memory and parallelism techniques are applied. `build_engine`
applies them as small named steps, always in this order:

    1. activation_checkpointing   model.grad_checkpointing: activations recomputed in backward
    2. optimizer_for              parameter groups (pretrain/param_groups.py: per-tower lr and weight decay,
                                  layer-wise lr decay, frozen parameters left out) + AdamW
    3. deepspeed_config           precision, ZeRO stage + offload + buckets, gradient clipping (RUN/deepspeed.json)
    4. initialize                 deepspeed.initialize (ZeRO-3 fp32: the master copy is the partition)
    5. nonfinite_guards           each stage's clipping and check that a non-finite gradient never reaches the
                                  weights, attached as engine.nonfinite_guard (train_step calls its step())
    6. compile_model              train.compile: torch.compile of the engine's module in place, after checkpointing
                                  (its blocks are traced as checkpoint regions; pretrain/torch_compile.py: why so)

Locking (LiT) happens before, in modeling.model.build_model; process-group start-up is pretrain.distributed;
the corrections of DeepSpeed internals are pretrain.deepspeed_fixes (version-checked).

    dist = init_distributed(cfg.train.device)       # pretrain.distributed
    engine, base_lrs = build_engine(cfg, bundle.model, dist, accum_steps, run_dir)
"""
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from clipforge.atomic import write_atomic
from clipforge.modeling.config import RunConfig
from clipforge.pretrain import deepspeed_fixes
from clipforge.pretrain.distributed import DistInfo, all_finite
from clipforge.pretrain.param_groups import group_table, param_groups
from clipforge.pretrain.torch_compile import compile_model


def manual_clipping(cfg: RunConfig) -> bool:
    # DeepSpeed 0.19.7 ZeRO-0 + fp32 + gradient_clipping > 0 crashes on the 0-dim logit_scale
    # (shared/notes/deepspeed-on-cpu.md); there NonfiniteGuard clips between backward and step.
    return cfg.deepspeed.zero_stage == 0 and cfg.deepspeed.precision == "fp32"


def deepspeed_config(cfg: RunConfig, world_size: int, accum_steps: int, num_params: int = None,
                     backend: str = None) -> dict:
    """num_params (trainable): buckets are capped at the model's size. ZeRO-3 allocates its reduce bucket
    up front: the default 5e8 elements is a 2 GB fp32 buffer per rank, 250x a 7 M-parameter model.
    backend: the process group's (torch.distributed.get_backend()), "gloo" or "nccl"."""
    ds = cfg.deepspeed
    micro = cfg.train.global_batch_size // (world_size * accum_steps)
    # Rounded up to 64 elements: DeepSpeed wants a multiple of its alignment factor (2 fp32, 4 bf16 on 2 ranks).
    cap = (lambda n: min(n, -(-num_params // 64) * 64)) if num_params else (lambda n: n)
    zero = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(reduce_bucket_size=cap(ds.reduce_bucket_size), allgather_bucket_size=cap(ds.allgather_bucket_size),
                    overlap_comm=False, contiguous_gradients=True)
    if ds.zero_stage == 3:
        zero.pop("allgather_bucket_size")
        zero.update(stage3_prefetch_bucket_size=cap(ds.allgather_bucket_size),
                    stage3_gather_16bit_weights_on_model_save=False)
        if backend == "gloo":
            # DeepSpeed 0.19.7's coalesced gather (GatheredParameters over many parameters: the periodic eval)
            # waits only on the last of its async gloo all_gathers; gloo finishes them out of order, so on CPU
            # earlier parameters were read half-written (18 of 30 gathers of the tiny model, 1e37 garbage).
            # NCCL orders them on one stream, so only gloo needs one blocking gather per parameter. Keyed on
            # the backend chosen, not on train.device: `auto` on a machine without a GPU is gloo too.
            zero["stage3_allgather_sequential"] = True
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config = {
        "train_batch_size": cfg.train.global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum_steps,
        # Always explicit: DeepSpeed's own default clips at 1.0.
        "gradient_clipping": 0.0 if manual_clipping(cfg) else cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16", "initial_scale_power": 16},
        # DeepSpeed 0.19.7 casts only the parameters to bf16/fp16 and keeps float buffers fp32, so a
        # BatchNorm (open_clip's ResNets, timm towers) meets fp32 running stats with a bf16 input and
        # fails; buffers follow the parameters (the text attention mask is 0/-inf, exact in both).
        "data_types": {"buffer_dtype": ds.precision},
        "steps_per_print": 10 ** 12,  # clipforge logs itself
        "wall_clock_breakdown": False,
        # A torch AdamW is passed in (no JIT-built DeepSpeed kernels on CPU).
        "zero_allow_untested_optimizer": True,
    }
    for key, value in ds.extra.items():
        config[key] = value
    return config


def activation_checkpointing(model: torch.nn.Module, cfg: RunConfig) -> None:
    if cfg.model.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)


def optimizer_for(model: torch.nn.Module, cfg: RunConfig, dist: DistInfo):
    """-> (AdamW over the parameter groups, base lr per group, number of trainable parameters). Rank 0 prints
    the groups once (pretrain/param_groups.py)."""
    groups, base_lrs = param_groups(model, cfg)
    if dist.rank == 0:
        print(group_table(model, cfg), file=sys.stderr)
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  eps=cfg.optim.eps, foreach=dist.device.type == "cuda")
    return optimizer, base_lrs, sum(p.numel() for g in groups for p in g["params"])


def write_deepspeed_json(config: dict, run_dir, rank: int) -> None:
    if run_dir is not None and rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        write_atomic(os.path.join(run_dir, "deepspeed.json"), json.dumps(config, indent=2))


def initialize(model: torch.nn.Module, optimizer, config: dict, cfg: RunConfig, dist: DistInfo):
    import deepspeed

    model.to(dist.device)
    ds = cfg.deepspeed
    share_fp32_master = ds.zero_stage == 3 and ds.precision == "fp32" and not ds.offload_optimizer
    with deepspeed_fixes.zero3_fp32_master_is_the_partition() if share_fp32_master else contextlib.nullcontext():
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


@dataclass
class GuardedStep:
    grad_norm: Optional[float]  # global L2 norm before clipping; None when DeepSpeed reports none
    # fp16 only: DeepSpeed's loss scaler skipped the step (the scaled gradient overflowed; it halves the scale).
    overflow: bool


class NonfiniteGuard:
    """Attached as engine.nonfinite_guard; train_step calls its `step()` in place of engine.step() at the
    accumulation boundary, so the step knows nothing of stages. clip_max: ZeRO-0 fp32 only (see
    manual_clipping), the norm clipforge clips to itself (inf: grad_clip=0, measured but not clipped);
    None: DeepSpeed clips and checks, and its norm is read after the step."""

    def __init__(self, engine, clip_max: Optional[float], fp16: bool):
        self.engine, self.clip_max, self.fp16 = engine, clip_max, fp16

    def _clip_or_drop(self) -> float:
        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip_max)
        if not all_finite(norm.detach()):
            self.engine.zero_grad()  # grads None -> AdamW leaves every parameter (and its moments) untouched
        return norm.item()

    def step(self) -> GuardedStep:
        norm = self._clip_or_drop() if self.clip_max is not None else None
        self.engine.step()
        if norm is None:
            reported = self.engine.get_global_grad_norm()
            norm = float(reported) if reported is not None else None
        overflow = self.fp16 and not self.engine.was_step_applied()
        return GuardedStep(grad_norm=None if overflow else norm, overflow=overflow)


def nonfinite_guards(engine, cfg: RunConfig) -> NonfiniteGuard:
    """Each stage's check that a non-finite gradient never reaches the weights -> the guard train_step calls."""
    ds = cfg.deepspeed
    if ds.zero_stage in (1, 2):
        deepspeed_fixes.check_zero12_gradients_in_every_precision(engine.optimizer)
    if ds.zero_stage == 3 and ds.precision != "fp16":
        deepspeed_fixes.check_zero3_gradients_in_every_precision(engine.optimizer)
    clip_max = (cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")) if manual_clipping(cfg) else None
    return NonfiniteGuard(engine, clip_max, fp16=ds.precision == "fp16")


def build_engine(cfg: RunConfig, model: torch.nn.Module, dist: DistInfo, accum_steps: int, run_dir: str = None):
    """-> (DeepSpeed engine, base lr per param group). Steps 1-6 of the module docstring, in that order."""
    activation_checkpointing(model, cfg)                                              # 1
    optimizer, base_lrs, trainable = optimizer_for(model, cfg, dist)                  # 2
    config = deepspeed_config(cfg, dist.world_size, accum_steps, trainable,
                              backend=torch.distributed.get_backend())                # 3
    write_deepspeed_json(config, run_dir, dist.rank)
    engine = initialize(model, optimizer, config, cfg, dist)                          # 4
    engine.nonfinite_guard = nonfinite_guards(engine, cfg)                            # 5
    compile_model(engine, cfg, dist.rank)                                             # 6
    return engine, base_lrs
