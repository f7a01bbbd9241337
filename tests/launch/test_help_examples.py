"""Every example printed by every `--help` runs, collected from the help text itself (so they cannot drift).

The examples run in a folder laid out as `clipforge demo` leaves it (runs/demo/raw, shards-train,
shards-val, a trained runs/demo/run; configs/ = the repo's), at test size: step counts and image
counts are cut down by REWRITES, inputs that only exist on a user's machine (photos/, laion.parquet,
Flickr30k json, ../shared/data/flickr8k) are tiny stand-ins made here. What cannot run on one CPU
machine (other hosts' rendezvous, slurm submission) runs with --dry-run, so its config and flags are
still checked. An example no rule covers fails the test: a new example must be made runnable here.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from .launch_helpers import REPO

HELPS = [[], ["launch"], ["launch", "local"], ["launch", "slurm"], ["launch", "slurm", "convert"],
         ["launch", "slurm", "eval"], ["pretrain"], ["eval"], ["convert"], ["verify"], ["demo"]]

# (pattern, replacement): test-size runs of the examples as printed
REWRITES = [
    (r"train\.steps=200", "train.steps=4"),   # the resume example: 2 steps more than the demo run's
    (r"train\.steps=\d+", "train.steps=2"), (r"train\.epochs=\d+", "train.steps=2"),
    (r"--nproc \d+", "--nproc 1"), (r"--nproc_per_node[ =]\d+", "--nproc_per_node=1"),
    (r"--train-images \d+", "--train-images 160"), (r"--val-images \d+", "--val-images 8"),
    (r"^clipforge demo$", "clipforge demo --out runs/demo-bare --nproc 1 --train-images 160 --val-images 8 train.steps=2"),
    (r"--out /tmp/demo", "--out runs/demo-small"), (r"--image-size 2\d\d", "--image-size 64"),
    (r"--workers \d+", "--workers 1"), (r" --model RUN ", " --model runs/demo/run "),
    (r"--model model\.pt ", "--model runs/demo/run/model.pt "), (r"--config C\.yaml", "--config configs/demo-cpu.yaml train.run_dir=runs/two-nodes"),
    (r"--pretrained weights\.pt", "--pretrained runs/demo/run/model.pt"),
    (r"--model ViT-B-32 ", f"--model {REPO}/configs/models/tiny-vit.json "),
    (r"^torchrun ", f"{sys.executable} -m torch.distributed.run "),
    (r"^clipforge ", f"{sys.executable} -m launch.cli "),
]
# launches that need other machines or a cluster: checked as a dry run
DRY_RUN = (r"--rdzv-endpoint 10\.", r"launch\.cli launch slurm")


def _help(words: List[str]) -> str:
    result = subprocess.run([sys.executable, "-m", "launch.cli", *words, "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def collect_examples() -> List[str]:
    """The command lines under every help's "examples:" heading (continuations joined, comments dropped)."""
    found: List[str] = []
    for words in HELPS:
        text = _help(words)
        block = re.split(r"^examples?:\n", text, flags=re.M)
        assert len(block) == 2, f"clipforge {' '.join(words)} --help has no examples: heading"
        lines = re.sub(r"\\\n\s*", "", block[1].split("\n\n")[0]).splitlines()
        for line in lines:
            line = re.sub(r"\s+#\s.*$", "", line.strip())
            if line and not line.startswith("#") and line not in found:
                found.append(line)
    return found


def runnable(example: str) -> List[str]:
    """One example -> the shell command lines the test runs (`a && b` -> both)."""
    commands = []
    for part in example.split(" && "):
        for pattern, replacement in REWRITES:
            part = re.sub(pattern, replacement, part.strip())
        if any(re.search(p, part) for p in DRY_RUN) and "--dry-run" not in part:
            head, sep, tail = part.partition(" -- ")   # launch's own flag, not the wrapped command's
            part = f"{head} --dry-run{sep}{tail}"
        commands.append(part)
    return commands


def _stand_ins(root: Path, raw: Path) -> None:
    """The inputs an example names that a user would have: made tiny, from the demo's raw scenes."""
    rows = [line.split(",", 1) for line in (raw / "captions.csv").read_text().splitlines()[1:]]
    rows = [(str(raw / image), caption) for image, caption in rows][:16]
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"URL": [r[0] for r in rows], "TEXT": [r[1] for r in rows]}), root / "laion.parquet")
    pq.write_table(pa.table({"url": [r[0] for r in rows], "caption": [r[1] for r in rows]}), root / "urls.parquet")
    (root / "photos").mkdir()
    for image, caption in rows[::2]:
        os.symlink(image, root / "photos" / Path(image).name)
        (root / "photos" / (Path(image).stem + ".txt")).write_text(caption)
    (root / "flickr30k-images").symlink_to(raw / "images")
    images = [{"filename": Path(image).name, "split": "test", "sentences": [{"raw": caption}]} for image, caption in rows]
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images}))
    flickr8k = root.parent / "shared" / "data"
    flickr8k.mkdir(parents=True)
    (flickr8k / "flickr8k").symlink_to(raw)


def _sh(command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu")
    return subprocess.run(shlex.split(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_layout(tmp_path_factory) -> Path:
    """A working folder as after `clipforge demo`, with a 2-step run in runs/demo/run (160 training scenes:
    the demo config's global batch is 128)."""
    from data_pipeline.convert import convert
    from data_pipeline.synthetic import make_synthetic_dataset
    root = tmp_path_factory.mktemp("user") / "work"
    demo = root / "runs" / "demo"
    captions = make_synthetic_dataset(str(demo / "raw"), num_train=160, num_val=8, size=48)
    for split in ("train", "val"):
        convert([str(captions)], str(demo / f"shards-{split}"), image_size=64, samples_per_shard=16,
                include_list=str(demo / "raw" / "splits" / f"{split}.txt"), progress=False)
    (root / "configs").symlink_to(REPO / "configs")
    _stand_ins(root, demo / "raw")
    trained = _sh(f"{sys.executable} -m launch.cli launch local --config configs/demo-cpu.yaml --nproc 1 "
                  "train.steps=2", root)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return root


EXAMPLES = collect_examples()


def test_every_help_has_examples_and_each_is_rewritten_to_a_command():
    assert len(EXAMPLES) >= 20
    for example in EXAMPLES:
        assert all(c.startswith(sys.executable) for c in runnable(example)), example


@pytest.mark.multiprocess
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs_as_printed(demo_layout, example):
    # shards/ is what the convert examples write and the eval / verify examples read
    shards = demo_layout / "shards"
    if re.match(r"clipforge convert (?!--merge-only)", example):
        for out in (shards, demo_layout / "flickr30k-test"):
            shutil.rmtree(out, ignore_errors=True)
    elif not shards.exists():
        shutil.copytree(demo_layout / "runs" / "demo" / "shards-val", shards)
    for command in runnable(example):
        result = _sh(command, demo_layout)
        assert result.returncode == 0, f"{example}\n  ran: {command}\n{result.stderr[-3000:]}"
