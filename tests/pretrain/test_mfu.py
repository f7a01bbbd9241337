"""The MFU the trainer logs (pretrain/metrics.py MetricsLogger, FLOPs per sample from modeling/flops.py) against
an independent count: torch's FlopCounterMode over a whole training step of the tiny open_clip model (forward
of both towers on a batch, a plain InfoNCE, backward), divided by a controlled clock and a given peak.
tests/pretrain/test_flops.py checks modeling.flops' per-sample numbers against FlopCounterMode; this checks
what reaches metrics.jsonl: samples/s x FLOPs per sample / (peak x world), per rank and across ranks.

Tolerance 3 %: the FLOP model counts the backward as 2x the forward, but the images need no gradient, so the
patch embedding's backward computes only its weight gradient (2.4 % of tiny-vit's step); the B x B logits
(modeling.flops leaves them out) are 0.01 % at batch 8."""
import json
import types

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from clipforge.modeling import flops as modeling_flops
import clipforge.pretrain.metrics as metrics
from clipforge.modeling.model import resolve_model_config

BATCH, PEAK, SECONDS = 8, 1e12, 2.0


def counted_step_flops(cfg: dict, batch: int) -> int:
    """FLOPs of one training step on `batch` pairs, counted by torch (on the meta device: no memory, and
    attention runs as bmm there, which the counter knows)."""
    with torch.device("meta"):
        model = open_clip.CLIP(**cfg)
        size = cfg["vision_cfg"]["image_size"]
        images = torch.zeros(batch, 3, size, size)
        tokens = torch.zeros(batch, cfg["text_cfg"]["context_length"], dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        image, text, scale = model(images, tokens)[:3]
        logits = scale * image @ text.T
        labels = torch.arange(batch, device="meta")
        ((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2).backward()
    return counter.get_total_flops()


class FakeDist:
    """torch.distributed for MetricsLogger.log: `world` ranks that all report this rank's samples/s."""

    def __init__(self, world: int):
        self.world = world

    def all_gather(self, out, local):
        for t in out:
            t.copy_(local)


@pytest.fixture
def clock(monkeypatch):
    now = {"t": 100.0}
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(perf_counter=lambda: now["t"], time=lambda: 0.0))
    monkeypatch.setattr(modeling_flops, "peak_bf16_flops", lambda device_name: PEAK)
    return now


@pytest.mark.parametrize("world", [1, 2])
def test_logged_mfu_equals_counted_flops_per_second_over_peak(world, clock, monkeypatch, tmp_path,
                                                             tiny_model_config):
    cfg = resolve_model_config(str(tiny_model_config))
    per_sample = counted_step_flops(cfg, BATCH) / BATCH
    monkeypatch.setattr(metrics, "dist", FakeDist(world))
    logger = metrics.MetricsLogger(str(tmp_path), 0, world, torch.device("cpu"), cfg)
    logger.set_progress(total_steps=10, step=0, samples_seen=0, global_batch_size=BATCH * world, steps_per_epoch=None)
    logger.reset_interval()
    for _ in range(3):                        # 3 steps of BATCH samples on this rank in SECONDS
        logger.add(BATCH, 0.0)
        clock["t"] += SECONDS / 3
    row = logger.log(3, {"loss": 1.0, "lr": 1e-4, "logit_scale": 14.3, "grad_norm": 0.5}, {})
    logger.writer.close()
    logger.jsonl.close()
    assert row["samples_per_s"] == pytest.approx(world * 3 * BATCH / SECONDS, rel=1e-9)
    # every rank runs 3 * BATCH / SECONDS samples/s; MFU is per GPU, so the same for 1 and 2 ranks
    achieved_per_gpu = 3 * BATCH / SECONDS * per_sample
    assert row["mfu"] == pytest.approx(achieved_per_gpu / PEAK, rel=0.03)
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["mfu"] == row["mfu"]


def test_no_mfu_without_a_known_peak_or_a_countable_model(clock, monkeypatch, tmp_path, tiny_model_config):
    monkeypatch.setattr(metrics, "dist", FakeDist(1))
    for cfg, peak in ((resolve_model_config(str(tiny_model_config)), None), (resolve_model_config("RN50"), PEAK)):
        monkeypatch.setattr(modeling_flops, "peak_bf16_flops", lambda device_name, p=peak: p)
        logger = metrics.MetricsLogger(str(tmp_path / str(peak)), 0, 1, torch.device("cpu"), cfg)
        logger.add(BATCH, 0.0)
        clock["t"] += 1.0
        row = logger.log(1, {"loss": 1.0, "lr": 1e-4, "logit_scale": 14.3, "grad_norm": 0.5}, {})
        logger.writer.close()
        logger.jsonl.close()
        assert "mfu" not in row and row["samples_per_s"] == pytest.approx(BATCH)
