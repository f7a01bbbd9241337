"""scikit-learn's digits as a CLIP_benchmark webdataset dir (data_pipeline/digits.py): every image is
load_digits' own pixels (dark ink on white, enlarged by whole pixels), labels and the fixed split are
load_digits' order, clipforge eval reads the class names, templates and type it writes, and so does
CLIP_benchmark 1.6.2's own wds reader; docs/eval.md's command runs as printed; bad arguments are one line,
exit 2."""
import io
import json
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipforge.data_pipeline.digits import CLASSNAMES, TEMPLATES, main, write_digits
from clipforge.eval.sources import open_source

from .test_clip_benchmark_parity import PEER, REPO

PEER_WDS = REPO / ".venv-peers" / "wds0286"
PEER_READ = r"""
import json, sys
from clip_benchmark.datasets.builder import build_wds_dataset
ds = build_wds_dataset("wds/digits", transform=lambda im: list(im.getdata())[:3], split="test", data_dir=sys.argv[1])
items = list(ds)
print(json.dumps({"classes": ds.classes, "templates": ds.templates, "n": len(items),
                  "labels": [int(y) for _, y in items[:20]]}))
"""

sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn: pip install -e '.[digits]'")


def _members(path):
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def test_every_digit_is_load_digits_own_pixels_label_and_place(tmp_path):
    assert write_digits(str(tmp_path / "d"), size=24) == {"train": 1438, "test": 359}
    digits = sklearn_datasets.load_digits()
    seen = []
    for split in ("train", "test"):
        assert (tmp_path / "d" / split / "nshards.txt").read_text() == "1\n"
        members = _members(tmp_path / "d" / split / "0.tar")
        for (png, data), (cls, label) in zip(members[::2], members[1::2]):
            i = int(png[:-4])
            assert png == f"{i:06d}.png" and cls == f"{i:06d}.cls" and int(label) == digits.target[i]
            pix = np.asarray(Image.open(io.BytesIO(data)))
            assert pix.shape == (24, 24) and (pix[::3, ::3] == 255 - np.rint(digits.images[i] * 255 / 16)).all()
            seen.append(i)
    assert seen == list(range(1797))  # train: the first 1,438, test: the last 359, load_digits' order
    assert (tmp_path / "d" / "dataset_type.txt").read_text() == "classification\n"
    source = open_source(str(tmp_path / "d"), "test", labels=True)
    assert (source.layout, source.classnames, source.templates, source.dataset_type) == \
        ("clip_benchmark-wds", CLASSNAMES, TEMPLATES, "classification")
    assert source.data.num_samples == 359 and CLASSNAMES == [str(d) for d in range(10)]
    assert "a photo of the number {c}." in TEMPLATES


def test_clip_benchmark_reads_it_as_its_own_wds_dataset(tmp_path):
    if not (PEER / "clip_benchmark").is_dir() or not PEER_WDS.is_dir():
        pytest.skip(f"CLIP_benchmark / webdataset 0.2.86 not under {PEER.parent} (make .venv-peers/.stamp-test)")
    write_digits(str(tmp_path / "d"), size=16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (PEER_WDS, PEER, REPO)))}
    proc = subprocess.run([sys.executable, "-c", PEER_READ, str(tmp_path / "d")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    labels = sklearn_datasets.load_digits().target
    assert (got["classes"], got["templates"], got["n"]) == (CLASSNAMES, TEMPLATES, 359)
    assert got["labels"] == [int(y) for y in labels[1438:1458]]


def test_the_documented_command_runs_as_printed(tmp_path):
    doc = (REPO / "docs" / "eval.md").read_text()
    line = re.search(r"^python -m clipforge.data_pipeline\.digits runs/digits$", doc, flags=re.M)
    assert line, "docs/eval.md: the digits command"
    proc = subprocess.run([sys.executable, *line.group(0).split()[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "wrote runs/digits: 1,438 train, 359 test, 10 classes"
    assert open_source(str(tmp_path / "runs" / "digits"), "train", labels=True).data.num_samples == 1438


@pytest.mark.parametrize("argv, message", [(["--size", "4"], "--size 4: at least 8"),
                                           (["--test-fraction", "1.5"], "--test-fraction 1.5: between 0 and 1")])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, message):
    assert main([str(tmp_path / "d"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"python -m clipforge.data_pipeline.digits: error: {message}" + \
        (" (the digits are 8x8)" if "size" in message else "")
