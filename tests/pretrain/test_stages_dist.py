"""A run in stages (train.stages) on real DeepSpeed, ZeRO-3 across 2 gloo ranks, over real shards
(tests/pretrain/stages_worker.py): 3 steps at 32 px, 16 tokens and patch dropout 0.5, then 3 at 48 px and 32 tokens.
Killed by a SIGTERM in stage 1 (step 2: its resume enters stage 2 itself) and in stage 2 (step 4: its resume builds
the stage-2 loader at a saved position), each resumed in new processes: the losses and final weights equal the
uninterrupted run's bit for bit, as the other ZeRO-3 resume tests do (test_trainer_dist.py). The export is the 48 px
model, and `clipforge eval` loads it at 48 px.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from clipforge.modeling.load_model import load_model
from tests.data_pipeline.conftest import write_dataset

from .test_trainer_dist import ENV, HERE, REPO, losses, max_diff, weights

WORKER = HERE / "stages_worker.py"
RUNS = ("full", "cut1", "cut2")

pytestmark = pytest.mark.multiprocess


def _launch(mode: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), mode,
           str(out)]
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    (out / f"{mode}.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{mode} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return eval((out / f"{mode}.codes").read_text())  # a dict literal written by the worker


def _record(out: Path, run: str, mode: str) -> dict:
    return json.loads((out / f"{run}.{mode}.json").read_text())


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    out = tmp_path_factory.mktemp("stages")
    write_dataset(out / "shards", num_shards=2, per_shard=32)  # 64 samples: 8 steps of 8, no epoch boundary
    codes = {"cut": _launch("cut", out)}
    killed_at = {run: (out / run / "checkpoints" / "latest").read_text() for run in ("cut1", "cut2")}
    codes["resume"] = _launch("resume", out)
    yield out, codes, killed_at
    for run in RUNS:  # ~75 MB of checkpoint and ~50 MB of exported weights per run: not left on CI's small disk
        shutil.rmtree(out / run / "checkpoints", ignore_errors=True)
        shutil.rmtree(out / run / "export", ignore_errors=True)
        (out / run / "model.pt").unlink(missing_ok=True)


def test_each_stage_runs_at_its_size_and_the_data_position_continues(staged):
    out, codes, _ = staged
    assert codes["cut"]["full"] == 0
    full = _record(out, "full", "cut")
    assert full["images"] == [32, 32, 32, 48, 48, 48] and full["tokens"] == [16, 16, 16, 32, 32, 32]
    # 1 class token + the grid's patches: stage 1 keeps 2 of its 2 x 2 (patch dropout 0.5), stage 2 all 3 x 3
    assert full["vision_tokens"] == [3, 3, 3, 10, 10, 10]
    keys = [key for batch in full["keys"] for key in batch]  # rank 0's half of every global batch
    assert len(keys) == 6 * 4 and len(set(keys)) == len(keys)  # stage 2 reads on, not the epoch's first batches again


def test_a_run_killed_in_either_stage_resumes_exactly(staged):
    out, codes, killed_at = staged
    assert codes["cut"]["cut1"] == codes["cut"]["cut2"] == 75  # preempted: checkpointed for a requeue
    assert killed_at == {"cut1": "step00000002", "cut2": "step00000004"}
    assert codes["resume"] == {"cut1": 0, "cut2": 0}
    # What the resumed processes ran: cut1 steps 3-6 (entering stage 2 itself), cut2 steps 5-6.
    assert _record(out, "cut1", "resume")["vision_tokens"] == [3, 10, 10, 10]
    assert _record(out, "cut2", "resume")["images"] == [48, 48]
    full = losses(out / "full")
    assert len(full) == 6
    for run in ("cut1", "cut2"):
        assert losses(out / run) == full, run
        assert max_diff(weights(out / run), weights(out / "full")) == 0.0, run
        assert _record(out, run, "cut")["keys"] + _record(out, run, "resume")["keys"] == \
            _record(out, "full", "cut")["keys"], run


def test_the_export_is_the_last_stages_model_and_clipforge_eval_loads_it_at_48_px(staged):
    out, _, _ = staged
    export = out / "full" / "export"
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{export}")
    assert model.visual.image_size == (48, 48) and model.visual.positional_embedding.shape == (10, 128)
    assert open_clip.get_tokenizer(f"local-dir:{export}")(["a photo"]).shape == (1, 32)
    written = json.loads((export / "open_clip_config.json").read_text())
    assert written["model_cfg"]["vision_cfg"]["image_size"] == written["preprocess_cfg"]["size"] == 48
    loaded = load_model(str(export))
    image = loaded.transform(Image.new("RGB", (40, 32), (200, 30, 30)))
    assert loaded.preprocess_cfg["size"] == (48, 48) and image.shape == (3, 48, 48)
    with torch.no_grad():
        assert loaded.model.encode_image(image[None]).shape == (1, 64)
