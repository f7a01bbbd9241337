"""Runs real clipforge training under DeepSpeed for the multi-process tests (one launch, many runs):

    python ds_worker.py reference OUT            # world of one: the single-process reference
    torchrun --nproc_per_node=2 ds_worker.py parity OUT
    torchrun --nproc_per_node=2 ds_worker.py resume-a OUT   # uninterrupted + SIGTERM'd runs, stages 2, 3
    torchrun --nproc_per_node=2 ds_worker.py resume-b OUT   # the SIGTERM'd runs resumed in new processes
    torchrun --nproc_per_node=2 ds_worker.py rollback OUT   # divergence -> rollback runs, a resume by hand,
                                                            # and a checkpoint write failing on rank 1 only

Each run writes OUT/<name>/ (metrics.jsonl, model.pt, ...); gradient / embedding probes go to OUT/*.pt.
"""
import contextlib
import os
import signal
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from storage_faults import failing_save  # noqa: E402
from synthetic import SyntheticLoader, synthetic_factory  # noqa: E402

import clipforge.pretrain.deepspeed_fixes as fixes_module  # noqa: E402
from clipforge.modeling.config import check_batch_split, load_config  # noqa: E402
from clipforge.pretrain.distributed import init_distributed  # noqa: E402
from clipforge.pretrain.engine import build_engine  # noqa: E402
from clipforge.modeling.preprocess import images_to_input  # noqa: E402
from clipforge.pretrain.export import export_model  # noqa: E402
from clipforge.pretrain.loss import build_loss  # noqa: E402
from clipforge.modeling.model import build_model  # noqa: E402
from clipforge.pretrain.run import _seed_all, run  # noqa: E402
from clipforge.pretrain.step import TextInput, _forward_backward  # noqa: E402

TINY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "models", "tiny-vit.json"))


def config(out: str, name: str, stage: int = 0, precision: str = "fp32", steps: int = 3, batch: int = 8, *extra):
    return load_config(None, [f"model.name={TINY}", "data.sources=[{path: synthetic}]", f"train.steps={steps}",
                              f"train.global_batch_size={batch}", "train.log_every=1", f"train.run_dir={out}/{name}",
                              "train.device=cpu", f"deepspeed.zero_stage={stage}", f"deepspeed.precision={precision}",
                              "optim.warmup_steps=1", "checkpoint.every_steps=1000",
                              *extra])


def grads_of_first_step(cfg, out_file: str) -> None:
    """Stage-0 gradient of step 1 (after DeepSpeed's cross-rank averaging), before the optimizer step."""
    info = init_distributed("cpu")
    _seed_all(cfg.train.seed)
    bundle = build_model(cfg.model, cfg.loss)
    accum = check_batch_split(cfg, info.world_size)
    engine, _ = build_engine(cfg, bundle.model, info, accum)
    _seed_all(cfg.train.seed + info.rank)
    data = SyntheticLoader(cfg.train.seed, cfg.train.global_batch_size, info.rank, info.world_size, 64, 32)
    batch = next(iter(data))
    images = images_to_input(batch["images"], bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"], engine)
    _forward_backward(engine, build_loss(cfg.loss, info.rank, info.world_size), images, TextInput(batch["tokens"]),
                      accum)
    if info.rank == 0:
        torch.save({n: p.grad.clone() for n, p in engine.module.named_parameters()}, out_file)
    dist.barrier()


def export_probe(out: str, stage: int) -> None:
    """Train 2 steps, embed fixed inputs with the engine (eval mode), export; the test compares."""
    cfg = config(out, f"export_z{stage}", stage, "fp32", 2)
    info = init_distributed("cpu")
    _seed_all(0)
    bundle = build_model(cfg.model, cfg.loss)
    engine, _ = build_engine(cfg, bundle.model, info, 1)
    loss_fn = build_loss(cfg.loss, info.rank, info.world_size)
    data = iter(SyntheticLoader(0, 8, info.rank, info.world_size, 64, 32))
    mean, std = bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"]
    for _ in range(2):
        batch = next(data)
        _forward_backward(engine, loss_fn, images_to_input(batch["images"], mean, std, engine),
                          TextInput(batch["tokens"]), 1)
        engine.step()
    engine.eval()
    images, tokens = SyntheticLoader(7, 4, 0, 1, 64, 32).global_batch_at(0)
    with torch.no_grad():
        img, txt, scale, _ = engine(images_to_input(images, mean, std, engine), tokens)
    export_model(engine, bundle.model_cfg, bundle.preprocess_cfg, cfg.train.run_dir)
    if info.rank == 0:
        torch.save({"images": images, "tokens": tokens, "image_features": img, "text_features": txt,
                    "logit_scale": scale}, os.path.join(cfg.train.run_dir, "probe.pt"))


def nan_at(step: int, until: int = None):
    """Loss hook: the loss of steps step..until (counting loss calls, accum=1) becomes NaN on rank 0 only."""
    def wrap(loss_fn):
        calls = {"n": 0}

        def fn(*args):
            calls["n"] += 1
            loss = loss_fn(*args)
            hit = step <= calls["n"] <= (until or step)
            return loss * float("nan") if hit and dist.get_rank() == 0 else loss
        return fn
    return wrap


def nan_grad_at(step: int):
    """Loss hook: at the given step the loss stays finite but rank 0's image-feature gradient is NaN."""
    def wrap(loss_fn):
        calls = {"n": 0}

        def fn(image_features, *rest):
            calls["n"] += 1
            if calls["n"] == step and dist.get_rank() == 0:
                image_features.register_hook(lambda grad: torch.full_like(grad, float("nan")))
            return loss_fn(image_features, *rest)
        return fn
    return wrap


def spike_at(step: int, factor: float):
    """Loss hook: the loss of the given step is multiplied by factor on rank 1 only (rank 0 sees no spike)."""
    def wrap(loss_fn):
        calls = {"n": 0}

        def fn(*args):
            calls["n"] += 1
            loss = loss_fn(*args)
            return loss * factor if calls["n"] == step and dist.get_rank() == 1 else loss
        return fn
    return wrap


def skipping_factory(batches: int):
    """Synthetic data resumed `batches` global batches past the checkpoint's position (a skip by hand)."""
    def factory(cfg, info, bundle, state):
        return synthetic_factory(cfg, info, bundle, dict(state, position=state["position"] + batches))
    return factory


def rollback_runs(out: str, codes: dict) -> None:
    """Non-finite steps 3-4 -> rollback to step 2 (skipping its next 2 batches) -> finishes; the same resumed by
    hand; non-finite again after the one rollback allowed -> exit 3; a spike on rank 1 only -> rollback. Then a
    disk that fills on rank 1 only while DeepSpeed writes checkpoint 3 -> every rank stops with exit 74."""
    diverge = ["train.max_nonfinite_steps=2", "train.max_rollbacks=1", "checkpoint.every_steps=2"]
    codes["rb"] = run(config(out, "rb", 2, "fp32", 5, 8, *diverge), synthetic_factory, nan_at(3, 4))
    codes["rb_by_hand"] = run(config(out, "rb_by_hand", 2, "fp32", 5, 8, "checkpoint.every_steps=2",
                                     f"checkpoint.resume={out}/rb/checkpoints/step00000002"), skipping_factory(2))
    codes["rb_exhausted"] = run(config(out, "rb_exhausted", 2, "fp32", 6, 8, *diverge), synthetic_factory,
                                nan_at(3, 6))
    codes["rb_spike"] = run(config(out, "rb_spike", 2, "fp32", 5, 8, *diverge, "train.spike_factor=3",
                                   "train.spike_window=2", "train.skip_batches_after_rollback=1"),
                            synthetic_factory, spike_at(4, 100.0))
    real_save = torch.save
    torch.save = failing_save(real_save, 3, rank=1)  # inside DeepSpeed's save of step 3, on rank 1 only
    try:
        codes["nospace"] = run(config(out, "nospace", 2, "fp32", 4, 8, "checkpoint.every_steps=1"), synthetic_factory)
    finally:
        torch.save = real_save


def sigterm_at(step: int):
    """Loss hook: rank 0 receives a real SIGTERM during the given step (the handler only sets a flag)."""
    def wrap(loss_fn):
        calls = {"n": 0}

        def fn(*args):
            calls["n"] += 1
            if calls["n"] == step and dist.get_rank() == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            return loss_fn(*args)
        return fn
    return wrap


def main(mode: str, out: str) -> None:
    codes = {}
    if mode == "reference":
        # Same per-forward shapes as each of 2 ranks (4 rows): CPU matmul kernels round differently
        # for other batch shapes (~1e-6), which is not the trainer's math. Feature caching keeps the
        # loss over all 8 negatives.
        for clip in (0, 1):
            codes[f"ref_clip{clip}"] = run(config(out, f"ref_clip{clip}", 0, "fp32", 3, 8, "train.micro_batch_size=4",
                                                  f"optim.grad_clip={clip}"), synthetic_factory)
        grads_of_first_step(config(out, "g", 0, "fp32", 1, 16), f"{out}/grads_full.pt")
        grads_of_first_step(config(out, "g", 0, "fp32", 1, 16, "train.micro_batch_size=4"), f"{out}/grads_accum4.pt")
    elif mode == "parity":
        # ZeRO-3 patches torch.nn.functional.linear process-wide (other matmul rounding), so every
        # run compared bit for bit comes before the first ZeRO-3 run of this process.
        for stage in (0, 2):  # clipping active (grad norm ~87 > 1)
            codes[f"clip_z{stage}"] = run(config(out, f"clip_z{stage}", stage), synthetic_factory)
        for stage in (0, 1, 2, 3):
            codes[f"z{stage}"] = run(config(out, f"z{stage}", stage, "fp32", 3, 8, "optim.grad_clip=0"), synthetic_factory)
            codes[f"bf16_z{stage}"] = run(config(out, f"bf16_z{stage}", stage, "bf16", 2), synthetic_factory)
        # ZeRO-3 fp32 as DeepSpeed 0.19.7 builds it on its own: a separate fp32 master copy of the partition
        shared_master = fixes_module.zero3_fp32_master_is_the_partition
        fixes_module.zero3_fp32_master_is_the_partition = contextlib.nullcontext
        try:
            codes["z3_master_copy"] = run(config(out, "z3_master_copy", 3, "fp32", 3, 8, "optim.grad_clip=0"),
                                          synthetic_factory)
        finally:  # the runs after this one get clipforge's shared master again
            fixes_module.zero3_fp32_master_is_the_partition = shared_master
        grads_of_first_step(config(out, "g", 0, "fp32", 1, 16, "train.micro_batch_size=2"), f"{out}/grads_2rank_accum4.pt")
        codes["nan"] = run(config(out, "nan", 2, "fp32", 2), synthetic_factory, nan_at(2))
        codes["one"] = run(config(out, "one", 2, "fp32", 1), synthetic_factory)
        for stage in (0, 2):  # ZeRO-0: clipforge's own check; ZeRO-2: DeepSpeed's, turned on for fp32
            codes[f"nan_grad_z{stage}"] = run(config(out, f"nan_grad_z{stage}", stage, "fp32", 2), synthetic_factory,
                                              nan_grad_at(2))
        codes["one_z0"] = run(config(out, "one_z0", 0, "fp32", 1), synthetic_factory)
        codes["nan_stop"] = run(config(out, "nan_stop", 0, "fp32", 6, 8, "train.max_nonfinite_steps=2",
                                       "checkpoint.every_steps=1"), synthetic_factory, nan_at(3, 6))
        for precision in ("fp32", "bf16"):  # ZeRO-3: DeepSpeed's check, asked for by pretrain.engine
            codes[f"nan_grad_z3_{precision}"] = run(config(out, f"nan_grad_z3_{precision}", 3, precision, 2),
                                                    synthetic_factory, nan_grad_at(2))
            codes[f"one_z3_{precision}"] = run(config(out, f"one_z3_{precision}", 3, precision, 1), synthetic_factory)
        export_probe(out, 3)
    elif mode in ("resume-a", "resume-b"):
        for stage in (2, 3):
            # With a model EMA: its fragments are saved per rank and restored (pretrain/ema.py).
            ema = "model.ema_decay=0.9"
            if mode == "resume-a":
                codes[f"full_z{stage}"] = run(config(out, f"full_z{stage}", stage, "fp32", 5, 8, ema), synthetic_factory)
                codes[f"cut_z{stage}"] = run(config(out, f"cut_z{stage}", stage, "fp32", 5, 8, ema), synthetic_factory,
                                             sigterm_at(2))
            else:
                codes[f"cut_z{stage}"] = run(config(out, f"cut_z{stage}", stage, "fp32", 5, 8, ema,
                                                    "checkpoint.resume=latest"), synthetic_factory)
    elif mode == "rollback":
        rollback_runs(out, codes)
    if dist.get_rank() == 0:
        with open(f"{out}/{mode}.codes", "w") as f:
            f.write(repr(codes))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
