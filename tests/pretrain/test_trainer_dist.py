"""The trainer's acceptance tests on real DeepSpeed across 2 gloo processes (tests/pretrain/ds_worker.py
does the training; each launch runs several short runs, the assertions live here).

Reference = the same trainer in ONE process on the same global batch of 8 (micro-batches of 4 with
feature caching: the same per-forward shapes as each rank, because CPU matmul kernels round
differently for other shapes; the loss still sees all 8 negatives).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "ds_worker.py"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))

pytestmark = pytest.mark.multiprocess


def _launch(mode: str, out: Path, nproc: int) -> dict:
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), mode, str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(WORKER), mode, str(out)]
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    (out / f"{mode}.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{mode} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return eval((out / f"{mode}.codes").read_text())  # a dict literal written by the worker


def losses(run_dir: Path) -> list:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "model.pt", weights_only=True, map_location="cpu")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    out = tmp_path_factory.mktemp("parity")
    codes = _launch("reference", out, 1)
    codes.update(_launch("parity", out, 2))
    return out, codes


def test_zero_0_1_2_equal_single_process_exactly_and_zero_3_within_1e_5(parity):
    out, codes = parity
    ref = losses(out / "ref_clip0")
    assert len(ref) == 3 and codes["ref_clip0"] == 0
    for stage in (0, 1, 2):
        assert codes[f"z{stage}"] == 0
        assert losses(out / f"z{stage}") == ref, f"ZeRO-{stage}"
        assert max_diff(weights(out / f"z{stage}"), weights(out / "ref_clip0")) == 0.0, f"ZeRO-{stage}"
    z3 = losses(out / "z3")
    assert max(abs(a - b) for a, b in zip(z3, ref)) <= 1e-5
    # Adam divides by sqrt(v): ~1e-6 gradient differences of near-zero gradients move a weight by a
    # small fraction of one lr-sized (5e-4) update.
    assert max_diff(weights(out / "z3"), weights(out / "ref_clip0")) <= 1e-4


def test_zero3_fp32_without_a_separate_master_copy_trains_exactly_as_with_one(parity):
    # pretrain.engine lets ZeRO-3 fp32 update the parameter partition in place (0.50x instead of 0.67x of
    # ZeRO-0's bytes); DeepSpeed's own build keeps a copy. Same losses and weights, bit for bit.
    out, codes = parity
    assert codes["z3_master_copy"] == 0
    assert losses(out / "z3_master_copy") == losses(out / "z3")
    assert max_diff(weights(out / "z3_master_copy"), weights(out / "z3")) == 0.0


def test_gradient_clipping_active_matches_single_process(parity):
    out, _ = parity
    ref = losses(out / "ref_clip1")
    # Our own clip at ZeRO-0 (DeepSpeed's crashes there) is torch's: bit-exact.
    assert losses(out / "clip_z0") == ref
    # DeepSpeed clips ZeRO-1/2 from partition norms with its own formula: last-bit differences only.
    assert max(abs(a - b) for a, b in zip(losses(out / "clip_z2"), ref)) <= 1e-6
    assert losses(out / "clip_z2") != losses(out / "z2")  # clipping really was active (grad norm ~87)


def test_bf16_trains_at_every_stage(parity):
    out, codes = parity
    for stage in (0, 1, 2, 3):
        assert codes[f"bf16_z{stage}"] == 0
        bf16 = losses(out / f"bf16_z{stage}")
        assert len(bf16) == 2 and all(abs(a - b) < 0.05 for a, b in zip(bf16, losses(out / "ref_clip1")))
        exported = weights(out / f"bf16_z{stage}")
        assert all(t.dtype == torch.float32 for t in exported.values())  # fp32 master weights exported


def test_four_accumulated_micro_batches_equal_the_full_batch_gradient(parity):
    out, _ = parity
    full = torch.load(out / "grads_full.pt", weights_only=True)
    accum4 = torch.load(out / "grads_accum4.pt", weights_only=True)
    assert max_diff(full, accum4) <= 1e-6
    assert full["clip.logit_scale"].abs().item() > 0  # logit_scale's gradient is counted once, not 4 times
    # 2 ranks x 4 micro-batches of 2 = the same 16-sample batch; relative (kernel shapes differ).
    two_rank = torch.load(out / "grads_2rank_accum4.pt", weights_only=True)
    for name in full:
        assert (full[name] - two_rank[name]).abs().max() <= 1e-5 * max(1.0, full[name].abs().max().item()), name


def test_nonfinite_loss_on_one_rank_is_skipped_counted_and_weights_unchanged(parity):
    out, codes = parity
    assert codes["nan"] == 0
    rows = [json.loads(line) for line in (out / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["nonfinite_steps"] == 1 and rows[1]["grad_norm"] is None
    # 2 steps with step 2 non-finite (on rank 0 only) == 1 step: every rank skipped the update.
    assert max_diff(weights(out / "nan"), weights(out / "one")) == 0.0
    # A finite loss with a NaN gradient on one rank: skipped too, at ZeRO-0 (ours), ZeRO-2 and ZeRO-3 (DeepSpeed's).
    for run, one in (("nan_grad_z0", "one_z0"), ("nan_grad_z2", "one"), ("nan_grad_z3_fp32", "one_z3_fp32"),
                     ("nan_grad_z3_bf16", "one_z3_bf16")):
        assert codes[run] == 0, run
        rows = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
        assert rows[1]["nonfinite_steps"] == 1 and rows[1]["loss"] == rows[1]["loss"], run  # loss finite
        assert max_diff(weights(out / run), weights(out / one)) == 0.0, run
    # train.max_nonfinite_steps=2 consecutive (steps 3, 4) -> stop, exit 3, naming the last checkpoint.
    assert codes["nan_stop"] == 3
    assert "2 consecutive non-finite steps" in (out / "parity.log").read_text()
    assert "last good checkpoint: step00000003" in (out / "parity.log").read_text()
    assert len(losses(out / "nan_stop")) == 3  # the stopping step is not logged as a train step


def test_export_loads_into_open_clip_and_gives_the_engines_embeddings(parity, tiny_model_config):
    import open_clip

    out, _ = parity
    run_dir = out / "export_z3"
    probe = torch.load(run_dir / "probe.pt", weights_only=True)
    open_clip.add_model_config(str(tiny_model_config))
    by_name = open_clip.create_model(tiny_model_config.stem, pretrained=str(run_dir / "model.pt")).eval()
    by_dir, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{run_dir / 'export'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{run_dir / 'export'}")
    assert tokenizer(["a photo"]).shape == (1, 32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    images = (probe["images"].float() / 255 - mean) / std
    for model in (by_name, by_dir.eval()):
        with torch.no_grad():
            img = model.encode_image(images, normalize=True)
            txt = model.encode_text(probe["tokens"], normalize=True)
        torch.testing.assert_close(img, probe["image_features"], atol=1e-6, rtol=0)
        torch.testing.assert_close(txt, probe["text_features"], atol=1e-6, rtol=0)
        assert abs(model.logit_scale.exp().item() - probe["logit_scale"].item()) < 1e-5


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    codes_a = _launch("resume-a", out, 2)
    codes_b = _launch("resume-b", out, 2)
    return out, codes_a, codes_b


@pytest.mark.parametrize("stage", [2, 3])
def test_sigterm_checkpoint_and_resume_equal_the_uninterrupted_run(resumed, stage):
    out, codes_a, codes_b = resumed
    assert codes_a[f"cut_z{stage}"] == 75  # preempted: checkpointed, exit code for requeue
    assert (out / f"cut_z{stage}" / "checkpoints" / "latest").read_text() == "step00000005"
    assert codes_a[f"full_z{stage}"] == 0 and codes_b[f"cut_z{stage}"] == 0
    full, cut = losses(out / f"full_z{stage}"), losses(out / f"cut_z{stage}")
    assert len(full) == 5 and cut == full
    assert max_diff(weights(out / f"cut_z{stage}"), weights(out / f"full_z{stage}")) == 0.0
    # The model EMA: restored exactly on resume, and really an average (not the final weights).
    cut_ema, full_ema = (load_file(out / name / "export-ema" / "open_clip_model.safetensors")
                         for name in (f"cut_z{stage}", f"full_z{stage}"))
    assert max_diff(cut_ema, full_ema) == 0.0
    assert max_diff(full_ema, weights(out / f"full_z{stage}")) > 1e-6
