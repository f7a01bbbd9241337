"""Trainer overhead and ZeRO memory, on 2 gloo ranks (torchrun), data in memory.

    python -m bench.trainer [--quick]

1. samples/s of clipforge's real train loop (pretrain.run.run: DeepSpeed ZeRO-0 fp32, feature-cached
   step, clipping, logging, checkpoint/preemption flags) vs a bare open_clip loop (DDP, open_clip's
   ClipLoss(local_loss, gather_with_grad), torch AdamW, clip_grad_norm_, logit-scale clamp) — the same
   model, batch, loss, optimizer and in-memory uint8 batches normalised the same way. Time per step is
   measured between batch fetches after warm-up steps, so both include everything their loops do.
2. bytes per rank of everything the engine keeps between steps (parameters, gradients, optimizer
   states, ZeRO partitions/buffers: unique tensor storages alive after one step) at ZeRO 0/1/2/3.
3. samples/s of the same loop distilling from a teacher (loss.distill; a freshly initialised ViT-B-32 exported as an
   open_clip local-dir, tiny-vit with --quick): its embeddings read from the batch (stored, what `clipforge embed`
   writes) vs the live teacher encoding each step's views and captions (the batches carry what the loader would).
4. samples/s of the same loop with train.compile vs eager, and the compile time (bench/trainer_compile.py).
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import cli, result
from bench.trainer_compile import compile_rates, compile_row

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "models" / "tiny-vit.json")


class Clocked:
    """In-memory batches (uint8 images, int64 tokens) of one rank; records the time of every fetch."""

    def __init__(self, steps, batch, rank, world, image_size=64, context=32, state=None, teacher=None):
        """teacher: what the loader hands a distillation teacher, per batch: {"views": S_t, "context": L_t} (live)
        or {"dim": D} (stored)."""
        import torch
        import torch.nn.functional as F
        g = torch.Generator().manual_seed(1234)
        b = batch // world
        self.batches = [{"images": torch.randint(0, 256, (b, 3, image_size, image_size), dtype=torch.uint8,
                                                  generator=g),
                         "tokens": torch.randint(1, 49000, (b, context), generator=g)} for _ in range(4)]
        for item in self.batches if teacher else []:
            if "views" in teacher:
                item["teacher_images"] = torch.randn(b, 3, teacher["views"], teacher["views"], generator=g)
                item["teacher_tokens"] = torch.randint(1, 49000, (b, teacher["context"]), generator=g)
            else:
                item["teacher_image_features"] = F.normalize(torch.randn(b, teacher["dim"], generator=g), dim=-1)
                item["teacher_text_features"] = F.normalize(torch.randn(b, teacher["dim"], generator=g), dim=-1)
        self.steps, self.times, self.counters = steps, [], {}
        self.steps_per_epoch = steps  # the loop's epoch counter (pretrain/metrics.py)

    def __iter__(self):
        for i in range(self.steps):
            self.times.append(time.perf_counter())
            yield self.batches[i % len(self.batches)]
        self.times.append(time.perf_counter())

    def state_dict(self):
        return {}


def _rate(times, batch, warmup):
    """batch / median step time after warm-up (the median ignores bursts from other users of the CPU)."""
    steps = sorted(b - a for a, b in zip(times[warmup:], times[warmup + 1:]))
    return batch / steps[len(steps) // 2]


def _clipforge(model_name, batch, steps, warmup, stage, out, teacher=None, overrides=()):
    """out: a fresh run dir (an existing one would be resumed). teacher: (spec, stored, Clocked's teacher dict).
    overrides: more dotted config keys."""
    from clipforge.modeling.config import load_config
    from clipforge.pretrain.run import run

    holder = {}
    distill = [] if teacher is None else [f"loss.distill.teacher={teacher[0]}", f"loss.distill.stored={teacher[1]}"]

    def factory(cfg, dist, bundle, state):
        holder["data"] = Clocked(steps, batch, dist.rank, dist.world_size, bundle.image_size,
                                 bundle.model_cfg["text_cfg"]["context_length"], teacher=teacher and teacher[2])
        return holder["data"]

    cfg = load_config(None, [f"model.name={model_name}", "data.sources=[{path: memory}]", f"train.steps={steps}",
                             f"train.global_batch_size={batch}", f"train.run_dir={out}", "train.log_every=10",
                             f"deepspeed.zero_stage={stage}", "deepspeed.precision=fp32", "train.device=cpu",
                             "checkpoint.every_steps=0", "checkpoint.every_minutes=0", "checkpoint.export_at_end=false",
                             *distill, *overrides])
    run(cfg, data_factory=factory)
    return _rate(holder["data"].times, batch, warmup)


def _distill_rates(quick: bool, out: str) -> dict:
    """samples/s of the tiny-vit student distilling from stored embeddings and from the live teacher, in
    interleaved rounds (a fresh teacher's weights cost what trained ones do)."""
    import torch
    import torch.distributed as dist
    from clipforge.modeling.config import LossConfig, ModelConfig
    from clipforge.modeling.model import build_model
    from clipforge.pretrain.export import write_export

    name = TINY if quick else "ViT-B-32"
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(name=name), LossConfig())
    if dist.get_rank() == 0:
        write_export(bundle.clip.state_dict(), bundle.model_cfg, bundle.preprocess_cfg, f"{out}/teacher",
                     model_pt=False)
    dist.barrier()
    spec, cfg = f"local-dir:{out}/teacher/export", bundle.model_cfg
    live = {"views": bundle.image_size, "context": cfg["text_cfg"]["context_length"]}
    batch, steps, warmup, rounds = (32, 8, 2, 1) if quick else (128, 12, 2, 2)
    res = {"teacher": "tiny-vit" if quick else name, "stored": [], "live": []}
    for round_ in range(rounds):
        res["stored"].append(_clipforge(TINY, batch, steps, warmup, 0, f"{out}/ds-{round_}",
                                        (spec, True, {"dim": cfg["embed_dim"]})))
        res["live"].append(_clipforge(TINY, batch, steps, warmup, 0, f"{out}/dl-{round_}", (spec, False, live)))
    return res


def _peer(model_name, batch, steps, warmup):
    import math
    import torch
    import torch.distributed as dist
    from open_clip.loss import ClipLoss
    from clipforge.modeling.model import instantiate, resolve_model_config

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model_cfg = resolve_model_config(model_name)
    model = torch.nn.parallel.DistributedDataParallel(instantiate(model_cfg))
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    data = Clocked(steps, batch, rank, world, model_cfg["vision_cfg"]["image_size"],
                   model_cfg["text_cfg"]["context_length"])
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    for batch_ in data:
        images = (batch_["images"].float() / 255 - mean) / std
        img, txt, scale = model(images, batch_["tokens"])
        loss = loss_fn(img, txt, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.module.logit_scale.clamp_(0, math.log(100))
    return _rate(data.times, batch, warmup)


def _tensors(obj, path="", depth=0):
    """(path, tensor) reachable from obj through attributes, lists, tuples and dicts (ZeRO keeps its flat
    buffers, partitions and states in such containers)."""
    import torch
    if torch.is_tensor(obj):
        yield path, obj
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item, path, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for key, item in obj.items():  # optimizer.state is keyed by Parameter: no name to add
            yield from _tensors(item, f"{path}.{key}" if isinstance(key, str) else f"{path}[]", depth + 1)
    elif depth < 2 and hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        for key, item in vars(obj).items():
            yield from _tensors(item, f"{path}.{key}", depth + 1)


def _engine_bytes(engine) -> dict:
    """Unique storages the engine keeps between steps: the module's parameters (ZeRO-3: their partitions),
    the optimizer wrapper's flat buffers / master copies / states, and gradient buffers (any path naming
    'grad'), in bytes: {"model_optimizer": ..., "grads": ...}."""
    found = {}
    params = list(engine.module.parameters())
    roots = {"params": [getattr(p, "ds_tensor", p) for p in params], "grad": [p.grad for p in params],
             "wrapper": engine.optimizer, "torch_optimizer": getattr(engine.optimizer, "optimizer", None)}
    for path, tensor in _tensors(roots):
        storage = tensor.untyped_storage()
        kind = "grads" if "grad" in path.lower() else "model_optimizer"
        found.setdefault(storage.data_ptr(), (kind, storage.nbytes()))
    totals = {"model_optimizer": 0, "grads": 0}
    for kind, nbytes in found.values():
        totals[kind] += nbytes
    return totals


def _state_bytes(model_name, stage, precision):
    from clipforge.modeling.config import load_config
    from clipforge.modeling.preprocess import images_to_input
    from clipforge.pretrain.distributed import init_distributed
    from clipforge.pretrain.engine import build_engine
    from clipforge.pretrain.loss import build_loss
    from clipforge.modeling.model import build_model
    from clipforge.pretrain.step import train_step

    cfg = load_config(None, [f"model.name={model_name}", "data.sources=[{path: memory}]", "train.steps=1",
                             "train.global_batch_size=4", f"deepspeed.zero_stage={stage}", f"deepspeed.precision={precision}"])
    info = init_distributed("cpu")
    bundle = build_model(cfg.model, cfg.loss)
    engine, _ = build_engine(cfg, bundle.model, info, 1)
    batch = next(iter(Clocked(1, 4, info.rank, info.world_size, bundle.image_size,
                              bundle.model_cfg["text_cfg"]["context_length"])))
    images = images_to_input(batch["images"], bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"], engine)
    train_step(engine, build_loss(cfg.loss, info.rank, info.world_size), images, batch["tokens"], 1, cfg)
    return _engine_bytes(engine)


def worker(quick: bool, out: str, memory: str = None) -> None:
    """memory="STAGE,PRECISION": measure one engine (its own process, so its memory is freed after); "distill": the
    distillation rates; "compile": train.compile vs eager."""
    import torch.distributed as dist
    from clipforge.pretrain.distributed import init_distributed

    info = init_distributed("cpu")
    if memory == "distill":
        res = _distill_rates(quick, out)
    elif memory == "compile":
        res = compile_rates(quick, out, _clipforge, TINY)
    elif memory is not None:
        stage, precision = memory.split(",")
        res = _state_bytes(TINY if quick else "ViT-B-32", int(stage), precision)
    else:
        batch, steps, warmup, rounds = (32, 12, 3, 1) if quick else (128, 30, 5, 3)
        res = {"peer": [], "clipforge_z0": [], "clipforge_z2": []}
        for round_ in range(rounds):  # interleaved: the shared CPU's load drifts between runs
            res["peer"].append(_peer(TINY, batch, steps, warmup))
            for stage in (0, 2):
                res[f"clipforge_z{stage}"].append(
                    _clipforge(TINY, batch, steps, warmup, stage, f"{out}/z{stage}-{round_}"))
    if info.rank == 0:
        Path(out, f"result-{memory or 'speed'}.json").write_text(json.dumps(res))
    dist.barrier()


def _launch(out: str, quick: bool, memory: str = None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if memory == "compile":  # an empty inductor cache: the compile time of a first run
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(out, "inductor"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "bench.trainer", "--worker", out] + (["--quick"] if quick else []) + (["--memory", memory] if memory else [])
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.trainer worker {memory or 'speed'} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(Path(out, f"result-{memory or 'speed'}.json").read_text())


def run(quick: bool):
    # --quick (CI smoke): bf16 ZeRO-0 and ZeRO-3 of the tiny model only.
    configs = [(s, p) for p in ("bf16", "fp32") for s in range(4) if not quick or (p == "bf16" and s in (0, 3))]
    with tempfile.TemporaryDirectory() as out:
        res = _launch(out, quick)
        mem = {(s, p): _launch(out, quick, f"{s},{p}") for s, p in configs}
        distill = _launch(out, quick, "distill")
        compiled = _launch(out, quick, "compile")
    model = "tiny-vit" if quick else "ViT-B-32"
    peer, ours = max(res["peer"]), max(res["clipforge_z0"])  # best round of each
    mib = lambda k, p: ", ".join(f"ZeRO-{s} {mem[s, p][k] / 2 ** 20:.0f}" for s in range(4) if (s, p) in mem)  # noqa: E731
    ratio = {p: mem[3, p]["model_optimizer"] / mem[0, p]["model_optimizer"] for p in ("fp32", "bf16") if (0, p) in mem}
    runs = lambda xs: "/".join(f"{x:.1f}" for x in xs)  # noqa: E731
    return [
        result("trainer", "open_clip loop (DDP, ClipLoss gather_with_grad, AdamW)", "samples/s, 2 CPU ranks, tiny-vit",
               ours, peer,
               notes=f"clipforge ZeRO-0 fp32, full loop; best of interleaved rounds: clipforge {runs(res['clipforge_z0'])}, "
                     f"ZeRO-2 {runs(res['clipforge_z2'])}, peer {runs(res['peer'])}; target >= 0.95x"),
        result("trainer-zero-memory", "ZeRO-0 (same trainer)", f"model+optimizer bytes/rank, ZeRO-3 bf16, 2 ranks, {model}",
               mem[3, "bf16"]["model_optimizer"], mem[0, "bf16"]["model_optimizer"], higher_is_better=False,
               notes=f"params + master copies + Adam states kept between steps, MiB/rank, bf16: {mib('model_optimizer', 'bf16')}"
                     + (f"; fp32: {mib('model_optimizer', 'fp32')}" if (0, "fp32") in mem else "")
                     + f"; gradient buffers kept between steps, bf16: {mib('grads', 'bf16')}; ZeRO-3/ZeRO-0 = "
                     + ", ".join(f"{r:.2f} {p}" for p, r in ratio.items()) + " (target <= 0.55)"),
        result("trainer-distill", f"live teacher ({distill['teacher']} forward per step, same loop)",
               "samples/s, 2 CPU ranks, tiny-vit student, stored teacher embeddings", max(distill["stored"]),
               max(distill["live"]), notes=f"loss.distill, ZeRO-0 fp32; best of interleaved rounds: stored "
                                           f"{runs(distill['stored'])}, live {runs(distill['live'])}"),
        compile_row(compiled, result),
    ]


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker("--quick" in sys.argv, sys.argv[2], sys.argv[sys.argv.index("--memory") + 1] if "--memory" in sys.argv else None)
    else:
        raise SystemExit(cli(run))
