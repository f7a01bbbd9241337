"""The training display: the status line's N/total, %, epoch, elapsed and ETA; metrics.jsonl's epoch, samples_seen
and elapsed_s (also for a resumed run); eval lines in natural k order; loss.png's curves, chance lines, title and
legends outside the axes."""
import json

import pytest
import torch
import torch.distributed as dist

from clipforge.pretrain.metrics import MetricsLogger, eval_line, loss_figure, plot_loss

NO_FLOPS_MODEL = {"vision_cfg": {"timm_model_name": "unmodelled"}, "text_cfg": {}}


@pytest.fixture
def world_of_one(tmp_path):
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_status_line_and_jsonl_fields_of_a_resumed_run(tmp_path, world_of_one, capsys):
    logger = MetricsLogger(str(tmp_path), 0, 1, torch.device("cpu"), NO_FLOPS_MODEL)
    # resumed at step 4 (64 samples seen) of a 10-step run with 5 steps per epoch and global batch 16
    logger.set_progress(total_steps=10, step=4, samples_seen=64, global_batch_size=16, steps_per_epoch=5)
    for step in (5, 6):
        logger.add(16, 0.0)
        logger.log(step, {"loss": 1.0, "lr": 1e-4, "logit_scale": 14.3, "grad_norm": 0.5}, {})
    logger.writer.close()
    logger.jsonl.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["samples_seen"], r["epoch"]) for r in rows] == [(5, 80, 1.0), (6, 96, 1.2)]
    assert 0 <= rows[0]["elapsed_s"] <= rows[1]["elapsed_s"] < 60
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("step 6/10 (60%) | epoch 1.20 | 0:00 elapsed, ETA 0:00 | loss 1.0000")


def test_eval_line_lists_k_in_natural_order():
    metrics = {f"{d}@{k}": k / 100 for d in ("text_retrieval_recall", "image_retrieval_recall", "mean_recall")
               for k in (10, 1, 5)}
    line = eval_line(3, {"mean_recall": 0.5, **metrics})
    assert line.startswith("eval step 3: image_retrieval_recall@1 0.0100, image_retrieval_recall@5 0.0500, "
                           "image_retrieval_recall@10 0.1000, mean_recall@1 0.0100, mean_recall@5 0.0500, "
                           "mean_recall@10 0.1000, mean_recall 0.5000, text_retrieval_recall@1")


def _run_dir(tmp_path):
    rows = [{"step": s, "loss": 3.0 / s, "lr": 1e-3 * min(1, s / 3)} for s in range(1, 10)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval").mkdir()
    for step in (3, 6, 9):
        metrics = {f"{d}_retrieval_recall@{k}": min(1.0, k * step / 60) for d in ("image", "text") for k in (1, 5, 10)}
        chance = {key: int(key.rpartition("@")[2]) / 40 for key in metrics}
        (tmp_path / "eval" / f"step{step:08d}.json").write_text(json.dumps({"step": step, "metrics": metrics,
                                                                             "chance": chance}))
    return tmp_path


def test_loss_png_has_loss_lr_recall_and_chance_curves_and_legends_outside(tmp_path):
    fig = loss_figure(str(_run_dir(tmp_path)))
    loss_ax, recall_ax = fig.axes[0], fig.axes[1]
    assert fig._suptitle.get_text().endswith(": training")
    labels = [line.get_label() for line in recall_ax.get_lines()]
    for k in (1, 5, 10):
        for direction in ("text->image", "image->text"):
            assert f"R@{k} {direction}" in labels and f"chance R@{k} {direction}" in labels
    lr_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "learning rate")
    assert len(lr_ax.get_lines()[0].get_xdata()) == len(loss_ax.get_lines()[0].get_xdata()) == 9
    renderer = fig.canvas.get_renderer()
    for ax in (loss_ax, recall_ax):
        legend, box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        assert legend.y1 <= box.y0, "the legend overlaps the plot area"
    assert plot_loss(str(tmp_path)).endswith("loss.png") and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
