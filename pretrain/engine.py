"""DeepSpeed engine: the ONE place where memory and parallelism techniques are applied, always in
this order: (1) gradient checkpointing, (2) parameter groups (weight decay, per-tower lr, frozen towers
left out), (3) precision, (4) ZeRO stage + offload + buckets, (5) gradient clipping.

    dist = init_distributed(cfg.train.device)
    engine, base_lrs = build_engine(cfg, bundle.model, dist, accum_steps, run_dir)
"""
import contextlib
import json
import os
import socket
from dataclasses import dataclass

import torch

from modeling.config import RunConfig
from pretrain.quiet import quiet_cpu_startup


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "auto") -> DistInfo:
    """torchrun/srun env -> process group. Alone (no RANK) it becomes a world of one.
    cuda: NCCL, one GPU per local rank; cpu: gloo."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    with quiet_cpu_startup(on_cpu=not use_cuda):
        import deepspeed

    if "RANK" not in os.environ:  # plain `python -m pretrain`: a world of one on this host
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    with quiet_cpu_startup(on_cpu=not use_cuda):  # the CPU backend builds its shared-memory op here
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def manual_clipping(cfg: RunConfig) -> bool:
    # DeepSpeed 0.19.7 ZeRO-0 + fp32 + gradient_clipping > 0 crashes on the 0-dim logit_scale
    # (shared/notes/deepspeed-on-cpu.md); there we clip ourselves between backward and step.
    return cfg.deepspeed.zero_stage == 0 and cfg.deepspeed.precision == "fp32"


def deepspeed_config(cfg: RunConfig, world_size: int, accum_steps: int, num_params: int = None) -> dict:
    """num_params (trainable): buckets are capped at the model's size. ZeRO-3 allocates its reduce bucket
    up front: the default 5e8 elements is a 2 GB fp32 buffer per rank, 250x a 7 M-parameter model."""
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
        if cfg.train.device == "cpu":
            # DeepSpeed 0.19.7's coalesced gather (GatheredParameters over many parameters: the periodic eval)
            # waits only on the last of its async gloo all_gathers; gloo finishes them out of order, so on CPU
            # earlier parameters were read half-written (18 of 30 gathers of the tiny model, 1e37 garbage).
            # NCCL orders them on one stream, so only CPU needs one blocking gather per parameter.
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
        "steps_per_print": 10 ** 12,  # clipforge logs itself
        "wall_clock_breakdown": False,
        # A torch AdamW is passed in (no JIT-built DeepSpeed kernels on CPU).
        "zero_allow_untested_optimizer": True,
    }
    for key, value in ds.extra.items():
        config[key] = value
    return config


def _tower(name: str) -> str:
    if name.startswith("clip.visual."):
        return "image"
    if name.startswith("clip.logit_"):
        return "temperature"
    return "text"  # clip.text.* (custom text) or CLIP's top-level text parameters


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    # Biases, norms (1-d), logit_scale/bias (0-d) and embeddings are not decayed (open_clip convention).
    return param.ndim < 2 or "embedding" in name or "logit_" in name or ".ln_" in name or "norm" in name


def param_groups(model: torch.nn.Module, cfg: RunConfig):
    """-> (groups for the optimizer, base lr of each group). Frozen parameters are left out."""
    lrs = {"image": cfg.optim.lr_image or cfg.optim.lr, "text": cfg.optim.lr_text or cfg.optim.lr,
           "temperature": cfg.optim.lr}
    buckets = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (_tower(name), _no_decay(name, param))
            buckets.setdefault(key, []).append(param)
    groups, base_lrs = [], []
    for (tower, no_decay), params in sorted(buckets.items()):
        groups.append({"params": params, "lr": lrs[tower], "weight_decay": 0.0 if no_decay else cfg.optim.weight_decay})
        base_lrs.append(lrs[tower])
    return groups, base_lrs


def build_engine(cfg: RunConfig, model: torch.nn.Module, dist: DistInfo, accum_steps: int, run_dir: str = None):
    """-> (DeepSpeed engine, base lr per param group). Writes RUN/deepspeed.json on rank 0."""
    import deepspeed

    if cfg.model.grad_checkpointing:  # (1) activations recomputed in backward
        model.clip.set_grad_checkpointing(True)
    groups, base_lrs = param_groups(model, cfg)  # (2)
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  eps=cfg.optim.eps, foreach=dist.device.type == "cuda")
    trainable = sum(p.numel() for g in groups for p in g["params"])
    config = deepspeed_config(cfg, dist.world_size, accum_steps, trainable)  # (3)-(5)
    if run_dir is not None and dist.rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "deepspeed.json"), "w") as f:
            json.dump(config, f, indent=2)
    model.to(dist.device)
    ds = cfg.deepspeed
    share_fp32_master = ds.zero_stage == 3 and ds.precision == "fp32" and not ds.offload_optimizer
    with _zero3_fp32_master_is_the_partition() if share_fp32_master else contextlib.nullcontext():  # (4)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    if ds.zero_stage in (1, 2):
        # DeepSpeed checks gradients for inf/NaN (and then skips the step) only in fp16/bf16; turn the same
        # check on for fp32 so a non-finite gradient never reaches the weights (ZeRO-0: pretrain/step.py).
        engine.optimizer.check_grad_overflow = True
    if ds.zero_stage == 3 and ds.precision != "fp16":
        _check_zero3_gradients_in_every_precision(engine.optimizer)
    return engine, base_lrs


@contextlib.contextmanager
def _zero3_fp32_master_is_the_partition():
    """ZeRO-3 in fp32 needs no separate fp32 master copy of the parameter partition, and DeepSpeed 0.19.7
    means to share it (`_create_fp32_partitions`: same dtype and device -> reuse), but compares the partition's
    torch.device with its own device *string* ('cpu' / 'cuda:0'), which is never equal, so it clones. Let
    that comparison see a torch.device for the duration of initialize: ViT-B-32 on 2 ranks, model+optimizer
    1155 -> 867 MiB/rank (ZeRO-3/ZeRO-0 0.67x -> 0.50x). Values are identical either way (tested)."""
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3 as Stage3

    original = Stage3._create_fp32_partitions

    def create_fp32_partitions(self):
        device_name = self.device
        self.device = torch.device(device_name)
        try:
            original(self)
        finally:
            self.device = device_name

    Stage3._create_fp32_partitions = create_fp32_partitions
    try:
        yield
    finally:
        Stage3._create_fp32_partitions = original


def _check_zero3_gradients_in_every_precision(optimizer) -> None:
    """DeepSpeed 0.19.7 ZeRO-3 looks for inf/NaN gradients only in fp16: in fp32/bf16 a NaN gradient behind a
    finite loss reached the weights. Its step() asks `_overflow_check_and_loss_scale_update` whether to skip,
    which in fp32/bf16 only reads a flag nothing sets; set it from DeepSpeed's own partitioned check first
    (one isinf/isnan pass over this rank's gradient partition + one all-reduce, at optimizer steps only):
    gradients dropped, weights and Adam moments untouched, step not applied."""
    decide = optimizer._overflow_check_and_loss_scale_update

    def check_then_decide():
        optimizer.overflow = optimizer.has_overflow(partition_gradients=True)
        return decide()

    optimizer._overflow_check_and_loss_scale_update = check_then_decide
