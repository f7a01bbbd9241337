"""The CUDA paths, run for real: `pytest -m gpu tests/gpu` (make gpu-check on a GPU node; skipped elsewhere).

World size 1 (NCCL), the tiny open_clip model (configs/models/tiny-vit.json), in-memory synthetic batches
(tests/pretrain/synthetic.py) fed to clipforge's real trainer (pretrain.run.run, as tests/pretrain/ds_worker.py
does on CPU). Every run of a module runs in this one process, in file order: ZeRO-3 patches
torch.nn.functional.linear process-wide, so the bit-for-bit resume test comes before the first ZeRO-3 run. The
data.decode=gpu tests (3b) read real shards of tests/data_pipeline/photos.py's JPEGs through the real loader.

Figures the tests measure (peak memory, MFU, losses, eval metrics) are written as JSON under
$GPU_CHECK_OUT/gpu-tests/ (the gpu_out fixture), so the kit's one output folder carries them back.
"""
import json
import math
import os
import signal

import pytest

from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.gpu

# Tolerances of the eval precision test, stated: L2-normalised embeddings under autocast vs fp32
# (max absolute difference per coordinate), and recall@k (absolute, out of 80 captions / 40 images).
EMB_TOL = {"fp16": 5e-3, "bf16": 3e-2}
RECALL_TOL = 0.05


def _config(run_dir, stage: int, precision: str, steps: int, batch: int = 16, *extra):
    from clipforge.modeling.config import load_config
    return load_config(None, [f"model.name={TINY_MODEL}", "data.sources=[{path: synthetic}]", f"train.steps={steps}",
                              f"train.global_batch_size={batch}", "train.log_every=1", f"train.run_dir={run_dir}",
                              "train.device=cuda", f"deepspeed.zero_stage={stage}", f"deepspeed.precision={precision}",
                              "optim.warmup_steps=1", "optim.lr=1e-3", "checkpoint.every_steps=1000", *extra])


def _repeating_factory(cfg, dist, bundle, state):
    """The same global batch at every step (a loss that must fall), with the loader's interface."""
    from tests.pretrain.synthetic import SyntheticLoader

    class Repeating(SyntheticLoader):
        def global_batch_at(self, i):
            return super().global_batch_at(0)
    return Repeating(cfg.train.seed, cfg.train.global_batch_size, dist.rank, dist.world_size, bundle.image_size,
                     bundle.model_cfg["text_cfg"]["context_length"], state=state)


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _weights(run_dir):
    import torch
    return torch.load(os.path.join(run_dir, "model.pt"), weights_only=True, map_location="cpu")


def _record(gpu_out, name, obj):
    with open(os.path.join(gpu_out, f"{name}.json"), "w") as f:
        json.dump(obj, f, indent=2, default=str)


def _sigterm_at(call: int):
    """Loss hook: this process receives a real SIGTERM during the given loss call (the handler sets a flag)."""
    def wrap(loss_fn):
        calls = {"n": 0}

        def fn(*args):
            calls["n"] += 1
            if calls["n"] == call:
                os.kill(os.getpid(), signal.SIGTERM)
            return loss_fn(*args)
        return fn
    return wrap


# -- 1. resume bit-identical (before any ZeRO-3 run of this process) ---------------------------------------

def test_sigterm_checkpoint_and_resume_equal_the_uninterrupted_run_on_cuda(tmp_path, gpu_out):
    import torch
    from clipforge.pretrain.run import run
    from tests.pretrain.synthetic import synthetic_factory

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # CUBLAS_WORKSPACE_CONFIG: set by the conftest
    try:
        full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
        assert run(_config(full, 2, "bf16", 6), synthetic_factory) == 0
        assert run(_config(cut, 2, "bf16", 6), synthetic_factory, _sigterm_at(3)) == 75  # preempted, checkpointed
        assert run(_config(cut, 2, "bf16", 6, 16, "checkpoint.resume=latest"), synthetic_factory) == 0
    finally:
        torch.use_deterministic_algorithms(previous)
    full_losses = {r["step"]: r["loss"] for r in _rows(full)}
    cut_losses = {r["step"]: r["loss"] for r in _rows(cut)}
    _record(gpu_out, "resume", {"full": full_losses, "cut_then_resumed": cut_losses})
    assert cut_losses == full_losses and sorted(full_losses) == list(range(1, 7))
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"


# -- 2. export -> clipforge eval on CUDA: autocast vs fp32 ------------------------------------------------

@pytest.fixture(scope="module")
def eval_shards(tmp_path_factory):
    from clipforge.data_pipeline.convert.api import convert
    from clipforge.data_pipeline.synthetic import make_synthetic_dataset
    root = tmp_path_factory.mktemp("evalset")
    captions = make_synthetic_dataset(str(root / "raw"), num_train=0, num_val=40, size=64, seed=3)
    convert([str(captions)], str(root / "shards"), image_size=64, samples_per_shard=16, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from clipforge.pretrain.run import run
    run_dir = str(tmp_path_factory.mktemp("export") / "run")
    assert run(_config(run_dir, 0, "bf16", 3), _repeating_factory) == 0
    assert os.path.isfile(os.path.join(run_dir, "export", "open_clip_config.json"))
    return run_dir


def test_exported_model_embeds_the_same_under_autocast_and_fp32_on_cuda(exported, gpu_out):
    import torch
    import torch.nn.functional as F
    from clipforge.eval.embed import autocast_for
    from clipforge.modeling.load_model import load_model
    from tests.pretrain.synthetic import SyntheticLoader

    m = load_model(exported)
    model = m.model.cuda().eval()
    images_u8, tokens = SyntheticLoader(7, 32, 0, 1, 64, 32).global_batch_at(0)
    mean = torch.tensor(m.preprocess_cfg["mean"], device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(m.preprocess_cfg["std"], device="cuda").view(1, 3, 1, 1)
    images = (images_u8.cuda().float() / 255 - mean) / std
    tokens = tokens.cuda()
    emb = {}
    with torch.no_grad():
        for precision in ("fp32", "fp16", "bf16"):
            with autocast_for("cuda", precision):
                img, txt = model.encode_image(images), model.encode_text(tokens)
            emb[precision] = (F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1))
    diffs = {p: max((emb[p][i] - emb["fp32"][i]).abs().max().item() for i in (0, 1)) for p in ("fp16", "bf16")}
    _record(gpu_out, "eval_embedding_diffs", {"max_abs_diff": diffs, "tolerance": EMB_TOL})
    for p, d in diffs.items():
        assert math.isfinite(d) and d <= EMB_TOL[p], f"{p} autocast vs fp32: {d} > {EMB_TOL[p]}"


def test_clipforge_eval_cli_on_cuda_autocast_within_tolerance_of_fp32(exported, eval_shards, tmp_path, gpu_out):
    from clipforge.eval.cli import main
    results = {}
    for precision in ("fp32", "fp16", "bf16"):
        out = tmp_path / f"{precision}.json"
        rc = main(["--model", os.path.join(exported, "export"), "--data", str(eval_shards), "--task", "retrieval",
                   "--device", "cuda", "--precision", precision, "--out", str(out), "--recall-k", "1,5,10"])
        assert rc == 0
        results[precision] = json.loads(out.read_text())["metrics"]
    _record(gpu_out, "eval_cli", {"metrics": results, "recall_tolerance": RECALL_TOL})
    for precision in ("fp16", "bf16"):
        for key, ref in results["fp32"].items():
            if "recall@" in key:
                assert abs(results[precision][key] - ref) <= RECALL_TOL, (precision, key, results[precision][key], ref)


# -- 3. the tiled loss at B = 262,144 on the GPU, with its peak memory ---------------------------------------

def test_tiled_loss_at_262144_runs_on_cuda_and_reports_its_memory(gpu_out):
    import torch
    from bench.gpu_loss import loss_figures
    (row,) = loss_figures([1 << 18], 512, torch.device("cuda"), tile=8192)
    _record(gpu_out, "tiled_loss_262144", row)
    assert row["tiled_status"] == "ok" and row["tiled_s"] > 0
    # the naive loss's logits alone would be 262144^2 fp32 = 256 GiB; the tiled one stays far below that
    assert 0 < row["tiled_extra_bytes"] < 16 * 2 ** 30


# -- 3b. data.decode=gpu: nvjpeg against the CPU path, pinned batches, a training on decoded batches --------------

# (mean, p99) |diff| in grey levels, device path on CUDA vs the CPU path (decode.train_image), set before a GPU
# measured them (gpu-tests/device_decode.json records the figures): nvjpeg's IDCT and chroma upsampling may differ
# from libjpeg-turbo's. For scale: on CPU (libjpeg-turbo in nvjpeg's place) the device path is within 1 level
# without DCT scaling, and the CPU path itself is mean 1.5 / p99 10 from open_clip's Pillow transform.
NVJPEG_TOL = {"full-size decode": (2.0, 16), "dct-scaled": (4.0, 40)}


def test_nvjpeg_decode_gives_the_cpu_paths_pixels_within_tolerance(gpu_out):
    import numpy as np
    from tests.data_pipeline.photos import both_paths, grey_level_diff, photo_jpeg

    cases = {"256x341 -> 224": (256, 341, 224, 90, "full-size decode"),
             "256x341 -> 224, 4:4:4": (256, 341, 224, 98, "full-size decode"),
             "375x500 -> 224 (area)": (375, 500, 224, 90, "full-size decode"),
             "256x341 -> 64": (256, 341, 64, 90, "dct-scaled")}
    figures = {}
    for name, (height, width, size, quality, kind) in cases.items():
        datas = [photo_jpeg(seed, height, width, quality=quality) for seed in range(16)]
        device, cpu, _ = both_paths(datas, size, hflip=True, device="cuda")
        diff = grey_level_diff(device, cpu)
        figures[name] = {"kind": kind, "mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)),
                         "max": int(diff.max())}
    _record(gpu_out, "device_decode", {"figures": figures, "tolerance_mean_p99": NVJPEG_TOL})
    for name, f in figures.items():
        mean, p99 = NVJPEG_TOL[f["kind"]]
        assert f["mean"] < mean and f["p99"] < p99, (name, f)


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory):
    from tests.data_pipeline.photos import corrupt_body, photo_jpeg, write_shards
    samples = [(f"k{i:03d}", photo_jpeg(i, 64, 80), "jpg") for i in range(31)]
    samples.append(("unreadable", corrupt_body(photo_jpeg(99, 64, 80)), "jpg"))  # no decoder reads it
    return write_shards(tmp_path_factory.mktemp("photos") / "shards", samples)


def test_the_loader_pins_cpu_batches_and_decodes_gpu_ones_on_cuda(photo_shards, gpu_out):
    import open_clip
    from clipforge.data_pipeline.config import DataConfig, SourceConfig
    from clipforge.data_pipeline.stream import build_train_loader
    from tests.data_pipeline.photos import grey_level_diff

    out = {}
    for decode in ("cpu", "gpu"):
        cfg = DataConfig(sources=[SourceConfig(photo_shards)], workers=1, decode=decode, hflip=True)
        loader = build_train_loader(cfg, seed=0, global_batch_size=8, rank=0, world_size=1, image_size=64,
                                    tokenizer=open_clip.get_tokenizer("ViT-B-32"), device="cuda")
        out[decode] = ([batch for batch in loader], dict(loader.counters))
    (cpu, cpu_counts), (gpu, gpu_counts) = out["cpu"], out["gpu"]
    assert all(b["images"].is_pinned() and b["tokens"].is_pinned() for b in cpu)  # non_blocking copies overlap
    assert all(b["images"].is_cuda for b in gpu)
    assert [b["keys"] for b in cpu] == [b["keys"] for b in gpu]
    assert cpu_counts == gpu_counts == {"corrupt_image": 1}  # nvjpeg and libjpeg-turbo on the CPU both refused it
    largest = max(int(grey_level_diff(a["images"], b["images"].cpu()).max()) for a, b in zip(cpu, gpu))
    _record(gpu_out, "device_decode_loader", {"max_abs_diff": largest})
    assert largest <= NVJPEG_TOL["full-size decode"][1]


def test_trains_on_batches_decoded_on_cuda(photo_shards, tmp_path, gpu_out):
    from clipforge.modeling.config import load_config
    from clipforge.pretrain.run import run

    run_dir = str(tmp_path / "decode_gpu")
    cfg = load_config(None, [f"model.name={TINY_MODEL}", f"data.sources=[{{path: '{photo_shards}'}}]",
                             "data.decode=gpu", "data.workers=1", "train.steps=3", "train.global_batch_size=8",
                             "train.log_every=1", f"train.run_dir={run_dir}", "train.device=cuda",
                             "deepspeed.zero_stage=2", "deepspeed.precision=bf16", "checkpoint.every_steps=1000",
                             "checkpoint.export_at_end=false", "checkpoint.keep_last=1"])
    assert run(cfg) == 0
    rows = _rows(run_dir)
    _record(gpu_out, "train_decode_gpu", {"rows": rows})
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)


# -- 4. bf16 / fp16 at ZeRO 0/2/3: finite, falling, MFU and peak memory logged (ZeRO-3 last) -----------------

@pytest.mark.parametrize("stage", [0, 2, 3])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trains_finite_and_falling_with_mfu_and_peak_memory(precision, stage, tmp_path, gpu_out):
    from clipforge.pretrain.run import run
    run_dir = str(tmp_path / f"{precision}_z{stage}")
    code = run(_config(run_dir, stage, precision, 12), _repeating_factory)
    rows = _rows(run_dir)
    _record(gpu_out, f"train_{precision}_z{stage}", {"exit": code, "rows": rows})
    # fp16: DeepSpeed's loss scaler may skip its first steps (overflow at scale 2^16); those skips must not
    # count as non-finite steps (exit 3) -- pretrain's overflow-vs-non-finite accounting (issue 19).
    assert code == 0, f"{precision} ZeRO-{stage}: exit {code}"
    losses = [r["loss"] for r in rows]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-3:]) / 3 < losses[0], f"loss did not fall: {losses}"
    last = rows[-1]
    assert last["peak_memory_bytes"] > 0
    assert "mfu" in last and 0 < last["mfu"] < 1, last.get("mfu")
