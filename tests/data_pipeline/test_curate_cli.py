"""clipforge curate end to end: its output passes `clipforge verify` and trains through the streaming loader;
the CLI's exit codes and one-line errors; `python -m clipforge.data_pipeline.curate`."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

from clipforge.data_pipeline.config import DataConfig, SourceConfig
from clipforge.data_pipeline.curate import CurateOptions
from clipforge.data_pipeline.curate.cli import main, parser
from clipforge.data_pipeline.stream import build_train_loader
from clipforge.data_pipeline.verify import main as verify_main

from .curate_inputs import KEYS, converted

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return converted(tmp_path_factory.mktemp("curate"))


def test_cli_output_verifies_and_streams(shards, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main([shards, "--out", out, "--min-words", "3", "--samples-per-shard", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "8 input samples -> 6 kept, 2 removed; 3 shards" in printed and "       2  min_words" in printed
    assert verify_main([out, "--no-progress"]) == 0
    assert "3 shards, 6 samples, 0 problem(s): OK" in capsys.readouterr().out
    manifest = json.loads(open(os.path.join(out, "manifest.json")).read())
    assert manifest["image"]["size"] == 32 and manifest["created_by"]["command"] == "curate"
    created = manifest["created_by"]
    assert created["config"]["min_words"] == 3 and len(created["input"]["manifest_sha256"]) == 64
    cfg = DataConfig(sources=[SourceConfig(path=out)], workers=0, shuffle_window=4)
    loader = build_train_loader(cfg, seed=0, global_batch_size=3, rank=0, world_size=1, image_size=16,
                                tokenizer=lambda captions: torch.zeros(len(captions), 4, dtype=torch.long))
    batches = list(loader)
    assert sorted(key for batch in batches for key in batch["keys"]) == [KEYS[i] for i in (0, 2, 3, 4, 5, 6)]
    assert batches[0]["images"].shape == (3, 3, 16, 16)


def test_every_sample_removed_exits_1_with_fates_written(shards, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main([shards, "--out", out, "--min-words", "100", "--no-progress"]) == 1
    assert "every sample was removed" in capsys.readouterr().err
    assert pq.read_table(os.path.join(out, "curation.parquet")).num_rows == 8
    assert verify_main([out, "--no-progress"]) == 0  # an empty dataset, but a consistent one


@pytest.mark.parametrize("args, message", [
    (["--scores", "x.parquet"], "--scores goes with --min-score and/or --top-fraction"),
    (["--dedup-threshold", "0.9"], "--embeddings goes with --dedup-threshold"),
    (["--top-fraction", "1.5", "--scores", "x"], "--top-fraction 1.5: must be in (0, 1]"),
    (["--keep-list", "missing.txt"], "--keep-list missing.txt: file not found"),
    (["--max-aspect-ratio", "0.5"], "--max-aspect-ratio 0.5: must be >= 1"),
])
def test_bad_flags_exit_2_with_one_line(shards, tmp_path, capsys, args, message):
    assert main([shards, "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipforge curate: error: ") and message in err and err.count("\n") == 1


def test_out_must_be_new_or_empty_and_input_a_dataset(shards, tmp_path, capsys):
    assert main([shards, "--out", shards]) == 2
    assert f"--out {shards}: is not empty" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert "dataset not found" in capsys.readouterr().err


def test_python_dash_m_and_clipforge_curate(shards, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    for prefix, out in ((["-m", "clipforge.data_pipeline.curate"], "a"), (["-m", "clipforge.launch.cli", "curate"], "b"),
                        (["-m", "clipforge.data_pipeline", "curate"], "c")):
        result = subprocess.run([sys.executable, *prefix, shards, "--out", str(tmp_path / out), "--no-progress",
                                 "--max-aspect-ratio", "3"], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "8 input samples -> 7 kept, 1 removed" in result.stdout


def test_flags_default_to_the_dataclass():
    args = parser().parse_args(["in/", "--out", "o/"])
    assert {f.name: getattr(args, f.name) for f in dataclasses.fields(CurateOptions)} == \
        dataclasses.asdict(CurateOptions(source="in/", out="o/"))


def test_the_input_manifests_content_fields_carry_over(shards, tmp_path):
    """Fields that describe the samples (image settings, caption layout) stay true of copied samples."""
    source = tmp_path / "in"
    shutil.copytree(shards, source)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest.update(txt_captions="first", caption_sources=["txt", "synthetic.txt"], removed_by={"earlier": 1})
    (source / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(source), "--out", str(tmp_path / "out"), "--min-words", "3", "--no-progress"]) == 0
    curated = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert curated["txt_captions"] == "first" and curated["caption_sources"] == ["txt", "synthetic.txt"]
    assert curated["image"] == manifest["image"] and curated["removed_by"] == {"min_words": 2}
    assert curated["created_by"]["command"] == "curate" and curated["counts"] == {"filtered": 2, "success": 6}
