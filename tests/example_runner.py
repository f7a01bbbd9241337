"""Shared by the example tests (tests/launch/test_help_examples.py: every `--help` example;
tests/test_docs_examples.py: every command in README.md and docs/*.md): turn a printed example into the
command lines that run here, at test size, in a folder laid out as `clipforge demo` leaves it.

The folder (demo_layout): runs/demo/{raw, shards-train, shards-val, run} made by the `clipforge demo` example
itself at test size, configs/ = the repo's, and tiny stand-ins for the inputs an example names that only
exist on a user's machine (photos/, laion.parquet, urls.parquet, a Flickr30k json, ../shared/data/flickr8k).
REWRITES cut step, rank, image and worker counts down; what needs other machines or a cluster (another
host's rendezvous, slurm submission) runs with --dry-run, so its config and flags are still checked.
"""
import functools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]

# (pattern, replacement): test-size runs of the examples as printed
REWRITES = [
    (r"train\.steps=200", "train.steps=4"),   # the resume example: 2 steps more than the demo run's
    (r"train\.steps=\d+", "train.steps=2"), (r"train\.epochs=\d+", "train.steps=2"),
    (r"--nproc \d+", "--nproc 1"), (r"--nproc_per_node[ =]\d+", "--nproc_per_node=1"),
    (r"--train-images \d+", "--train-images 160"), (r"--val-images \d+", "--val-images 8"),
    # the bare demo is what builds demo_layout (160 training scenes: the demo config's global batch is 128)
    (r"^clipforge demo$", "clipforge demo --nproc 1 --train-images 160 --val-images 8 train.steps=2"),
    (r"--out /tmp/demo", "--out runs/demo-small"), (r"--image-size 2\d\d", "--image-size 64"),
    (r"--workers \d+", "--workers 1"), (r" --model RUN ", " --model runs/demo/run "),
    (r"--model model\.pt ", "--model runs/demo/run/model.pt "), (r"--config C\.yaml", "--config configs/demo-cpu.yaml train.run_dir=runs/two-nodes"),
    (r"--pretrained weights\.pt", "--pretrained runs/demo/run/model.pt"),
    # the from-scratch recipe's global batch (256) is more than the test layout's 160 Flickr8k training images
    (r"--config configs/flickr8k-cpu\.yaml", "--config configs/flickr8k-cpu.yaml train.global_batch_size=64"),
    (r"--model ViT-B-32 ", f"--model {REPO}/configs/models/tiny-vit.json "),
    (r"/data/shards\b", "shards"),            # a cluster file system -> the working folder
    (r"^torchrun ", f"{sys.executable} -m torch.distributed.run "),
    (r"^clipforge ", f"{sys.executable} -m clipforge.launch.cli "),
]
# launches that need other machines or a cluster: checked as a dry run
DRY_RUN = (r"--rdzv-endpoint 10\.", r"launch\.cli launch slurm")
# a training launch that names no run length (the recipe's own, hours) runs 2 steps
TRAINS = r"launch\.cli (launch local|pretrain)\b|-m clipforge.pretrain\b(?!\.)"  # not pretrain.embed
RUN_LENGTH = r"\btrain\.(steps|epochs|samples)="

DEMO = "clipforge demo"   # the example that builds demo_layout


def rewrite(part: str) -> str:
    """One command line as printed -> as run here."""
    part = part.strip()
    for pattern, replacement in REWRITES:
        part = re.sub(pattern, replacement, part)
    if re.search(TRAINS, part) and not re.search(RUN_LENGTH, part) and "--dry-run" not in part:
        part += " train.steps=2"
    if any(re.search(p, part) for p in DRY_RUN) and "--dry-run" not in part:
        head, sep, tail = part.partition(" -- ")   # launch's own flag, not the wrapped command's
        part = f"{head} --dry-run{sep}{tail}"
    return part


def runnable(example: str) -> List[str]:
    """One example -> the shell command lines the test runs (`a && b` -> both)."""
    return [rewrite(part) for part in example.split(" && ")]


def example_lines(text: str) -> List[str]:
    """Command lines of a block of examples: backslash continuations joined, comments dropped."""
    found = []
    for line in re.sub(r"\\\n\s*", "", text).splitlines():
        line = re.sub(r"\s+#\s.*$", "", line.strip())
        if line and not line.startswith("#"):
            found.append(line)
    return found


@functools.lru_cache(maxsize=None)
def help_text(words: tuple) -> str:
    """`clipforge WORDS --help` (cached: both example tests read the same helps)."""
    result = subprocess.run([sys.executable, "-m", "clipforge.launch.cli", *words, "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, f"clipforge {' '.join(words)} --help: {result.stderr}"
    return result.stdout


HELPS = [(), ("launch",), ("launch", "local"), ("launch", "slurm"), ("launch", "slurm", "convert"),
         ("launch", "slurm", "eval"), ("pretrain",), ("embed",), ("eval",), ("convert",), ("verify",), ("curate",),
         ("export",), ("demo",)]


@functools.lru_cache(maxsize=None)
def help_examples() -> tuple:
    """The command lines under every help's "examples:" heading (continuations joined, comments dropped)."""
    found: List[str] = []
    for words in HELPS:
        block = re.split(r"^examples?:\n", help_text(words), flags=re.M)
        assert len(block) == 2, f"clipforge {' '.join(words)} --help has no examples: heading"
        found += [line for line in example_lines(block[1].split("\n\n")[0]) if line not in found]
    return tuple(found)


def sh(command: str, cwd: Path, timeout: float = 600, env: Optional[Dict[str, str]] = None,
       shell: bool = False) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", **(env or {}))
    argv = ["bash", "-c", command] if shell else shlex.split(command)
    return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def check(result: subprocess.CompletedProcess, example: str, command: str) -> None:
    assert result.returncode == 0, f"{example}\n  ran: {command}\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}"


def _stand_ins(root: Path, raw: Path) -> None:
    """The inputs an example names that a user would have: made tiny, from the demo's raw scenes."""
    rows = [line.split(",", 1) for line in (raw / "captions.csv").read_text().splitlines()[1:]]
    rows = [(str(raw / image), caption) for image, caption in rows][:16]
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"URL": [r[0] for r in rows], "TEXT": [r[1] for r in rows],
                             "similarity": [0.3] * len(rows)}), root / "laion.parquet")
    pq.write_table(pa.table({"url": [r[0] for r in rows], "caption": [r[1] for r in rows]}), root / "urls.parquet")
    (root / "photos").mkdir()
    for image, caption in rows[::2]:
        os.symlink(image, root / "photos" / Path(image).name)
        (root / "photos" / (Path(image).stem + ".txt")).write_text(caption)
    # Karpathy's split files: Flickr30k (train / test), COCO (images under filepath/, restval counts as train)
    (root / "flickr30k-images").symlink_to(raw / "images")
    (root / "coco").mkdir()
    (root / "coco" / "val2014").symlink_to(raw / "images")
    karpathy = (("flickr30k", ("train", "test"), {}), ("coco", ("restval", "test"), {"filepath": "val2014"}))
    for name, splits, extra in karpathy:
        images = [{"filename": Path(image).name, "split": splits[i % 2], "sentences": [{"raw": caption}], **extra}
                  for i, (image, caption) in enumerate(rows)]
        (root / f"dataset_{name}.json").write_text(json.dumps({"images": images}))
    # Flickr8k's layout (captions.csv, images/, splits/{train,dev,test}.txt) over the scenes
    flickr8k = root.parent / "shared" / "data" / "flickr8k"
    (flickr8k / "splits").mkdir(parents=True)
    for name in ("captions.csv", "images"):
        (flickr8k / name).symlink_to(raw / name)
    for split, source in (("train", "train"), ("dev", "val"), ("test", "val")):
        (flickr8k / "splits" / f"{split}.txt").symlink_to(raw / "splits" / f"{source}.txt")


def make_layout(root: Path, trained: bool = True) -> Path:
    """A user's working folder: configs/, the stand-ins, and runs/demo as the `clipforge demo` example
    leaves it (trained=True: the demo run itself, ~45 s; False: only its raw scenes, rendered alike)."""
    from clipforge.data_pipeline.synthetic import make_synthetic_dataset
    root.mkdir(parents=True)
    (root / "configs").symlink_to(REPO / "configs")
    demo = rewrite(DEMO)
    counts = [int(re.search(rf"--{name} (\d+)", demo).group(1)) for name in ("train-images", "val-images")]
    make_synthetic_dataset(str(root / "runs" / "demo" / "raw"), *counts)   # what the demo renders first
    _stand_ins(root, root / "runs" / "demo" / "raw")
    if trained:
        run_demo(root)
    return root


def run_demo(root: Path) -> None:
    """The `clipforge demo` example at test size (idempotent: runs once per folder)."""
    done = root / "runs" / "demo" / "classification.json"
    if not done.exists():
        command = rewrite(DEMO)
        result = sh(command, root)
        check(result, DEMO, command)
        assert "clipforge demo results" in result.stdout, result.stdout[-2000:]
    _curate_stand_ins(root, root / "runs" / "demo" / "shards-train")


def _curate_stand_ins(root: Path, shards: Path) -> None:
    """The precomputed files the curate examples name, for the demo's training shards: scores rising with the
    sample index, embeddings where every 4th sample repeats the one before, a removal list of one sha256."""
    if (root / "clip_scores.parquet").exists():
        return
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from clipforge.data_pipeline.shards import index_tar, open_shards
    keys = [entry.key for shard in open_shards(str(shards)).shards for entry in index_tar(shard.path).samples]
    pq.write_table(pa.table({"key": keys, "clip_score": np.linspace(0.1, 0.4, len(keys))}),
                   root / "clip_scores.parquet")
    vectors = np.random.default_rng(0).normal(size=(len(keys), 16)).astype(np.float32)
    vectors[3::4] = vectors[2::4][:len(vectors[3::4])]
    np.save(root / "image_embeddings.npy", vectors)
    first = pq.read_table(shards / "shard-000000.parquet", columns=["sha256"]).column("sha256")[0].as_py()
    (root / "removed_sha256.txt").write_text(first + "\n")


def known_broken(example: str, broken: Dict[str, str], run: bool = True):
    """pytest.param of one example, strict-xfail when it is listed in BROKEN (the fault is outside the test:
    once fixed, the XPASS fails and says to drop the entry; run=False: not run, for slow failures whose
    text the fix will change, so the test's own "still printed" check drops the entry)."""
    marks = [pytest.mark.xfail(strict=True, run=run, reason=broken[example])] if example in broken else []
    return pytest.param(example, marks=marks, id=example)
