"""loss.distill in real trainings: 2 gloo ranks under DeepSpeed ZeRO-2 (tests/pretrain/tiny_runs.py under torchrun),
the real loader over converted shards, a tiny teacher exported as an open_clip local-dir whose store `clipforge embed`
wrote on 2 ranks. The student's losses with the stored embeddings equal those with the live teacher (1e-6), also with
2 accumulated micro-batches per rank (the KD is over the global batch, so accumulation changes nothing); the
teacher's temperature moves the loss (its logits reach it). loss.local_loss: tests/pretrain/test_distill_loss_dist.py
(the logged loss of a local-loss run is rank 0's share, not comparable here)."""
import subprocess
import sys

import pytest

from tests.pretrain.synthetic_shards import synthetic_shards
from tests.pretrain.teachers import write_teacher
from tests.pretrain.tiny_run_helpers import ENV, REPO, losses, run_tiny

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("distill")
    shards = synthetic_shards(out / "data", num_val=8) / "train"  # 64 images in 2 shards of 32
    teacher = write_teacher(out / "teacher")
    embed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                            "clipforge.pretrain.embed", "--model", teacher, "--data", str(shards)],
                           env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert embed.returncode == 0, embed.stderr[-3000:]
    common = [f"data.sources=[{{path: '{shards}'}}]", "data.workers=0", "train.global_batch_size=16", "train.steps=3",
              "deepspeed.zero_stage=2", "checkpoint.elastic=false", f"loss.distill.teacher={teacher}"]
    specs = {"live": [], "stored": ["loss.distill.stored=true"],
             "stored_accumulated": ["loss.distill.stored=true", "train.micro_batch_size=4"],
             "stored_cooler": ["loss.distill.stored=true", "loss.distill.temperature=0.02"]}
    reports = run_tiny(out, [{"name": name, "data": "stream", "overrides": common + extra, "drop_checkpoints": True}
                             for name, extra in specs.items()], nproc=2)
    return out, reports, embed.stderr


def test_the_store_is_written_on_two_ranks(runs):
    out, reports, embed_log = runs
    assert "wrote" in embed_log and "(2 shards)" in embed_log
    assert all(r["code"] == 0 for r in reports.values()), reports


def test_stored_embeddings_give_the_live_teachers_losses(runs):
    out = runs[0]
    live = losses(out / "live")
    assert len(live) == 3
    assert losses(out / "stored") == pytest.approx(live, rel=0, abs=1e-6)
    assert losses(out / "stored_accumulated") == pytest.approx(live, rel=0, abs=1e-6)  # 2 micro-batches per rank


def test_the_teachers_logits_reach_the_loss(runs):
    out = runs[0]
    assert abs(losses(out / "stored_cooler")[0] - losses(out / "stored")[0]) > 1e-3
    config = (out / "stored" / "config.yaml").read_text()
    assert "distill:" in config and "stored: true" in config
