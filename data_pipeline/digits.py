"""scikit-learn's digits (`sklearn.datasets.load_digits`: 1,797 8x8 grey images of the handwritten digits
0-9, a file inside the scikit-learn package: no download) written as a CLIP_benchmark webdataset dir, the
layout `clipforge eval` (and CLIP_benchmark's `--dataset wds/... --dataset_root DIR`) reads as-is:

    python -m clipforge.data_pipeline.digits runs/digits            # [--size 64] [--test-fraction 0.2]

    runs/digits/train/0.tar + nshards.txt   KEY.png (dark ink on white, SIZE px, nearest-neighbour) + KEY.cls
    runs/digits/test/0.tar  + nshards.txt   the last 359 (20 %) of load_digits' order; train: the first 1,438
    runs/digits/classnames.txt              0 .. 9
    runs/digits/zeroshot_classification_templates.txt   'a photo of the number {c}.' ...
    runs/digits/dataset_type.txt            classification

The split is load_digits' order cut once, not shuffled (the scikit-learn example's `shuffle=False`), so it
is the same on every machine. scikit-learn is needed only here: `pip install -e '.[digits]'`.
"""
import argparse
import io
import os
import sys
import tarfile
from typing import Dict, List, Optional

from clipforge.atomic import atomic_path
from clipforge.errors import UserError

CLASSNAMES = [str(d) for d in range(10)]
TEMPLATES = ["a photo of the number {c}.", "a photo of the digit {c}.", "a handwritten {c}.",
             "a low resolution photo of the number {c}.", "a black and white picture of the digit {c}."]


class DigitsError(UserError, RuntimeError):
    """scikit-learn is missing, or the arguments are out of range."""


def load():
    """(images uint8 [N, 8, 8] in 0..16, labels [N]) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DigitsError("the digits come with scikit-learn, which is not installed: "
                          "pip install -e '.[digits]' (or scikit-learn)") from None
    digits = load_digits()
    return digits.images, digits.target


def render(image, size: int) -> bytes:
    """One 8x8 digit (0 = paper .. 16 = ink) as a PNG of size x size: dark ink on white, crisp pixels."""
    import numpy as np
    from PIL import Image
    grey = (255 - np.rint(np.asarray(image, dtype=np.float64) * 255 / 16)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).resize((size, size), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def write_digits(out: str, size: int = 64, test_fraction: float = 0.2,
                 limit: Optional[int] = None) -> Dict[str, int]:
    """Write the layout above into `out`; -> samples per split. `limit`: only the first N of each split
    (tests)."""
    if size < 8:
        raise DigitsError(f"--size {size}: at least 8 (the digits are 8x8)")
    if not 0 < test_fraction < 1:
        raise DigitsError(f"--test-fraction {test_fraction}: between 0 and 1")
    images, labels = load()
    n_test = int(round(len(labels) * test_fraction))
    splits = {"train": range(0, len(labels) - n_test), "test": range(len(labels) - n_test, len(labels))}
    counts = {}
    for split, rows in splits.items():
        rows = list(rows)[:limit] if limit else list(rows)
        folder = os.path.join(out, split)
        os.makedirs(folder, exist_ok=True)
        with atomic_path(os.path.join(folder, "0.tar")) as tmp, tarfile.open(tmp, "w") as tf:
            for i in rows:
                members = ((f"{i:06d}.png", render(images[i], size)), (f"{i:06d}.cls", str(int(labels[i])).encode()))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    tf.addfile(info, io.BytesIO(data))
        _write(os.path.join(folder, "nshards.txt"), ["1"])
        counts[split] = len(rows)
    _write(os.path.join(out, "classnames.txt"), CLASSNAMES)
    _write(os.path.join(out, "zeroshot_classification_templates.txt"), TEMPLATES)
    _write(os.path.join(out, "dataset_type.txt"), ["classification"])
    return counts


def _write(path: str, lines: List[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clipforge.data_pipeline.digits", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder to write (e.g. runs/digits)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (default 64; nearest-neighbour)")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="the last share of the samples (default 0.2)")
    args = ap.parse_args(argv)
    try:
        counts = write_digits(args.out, args.size, args.test_fraction)
    except UserError as e:
        print(f"python -m clipforge.data_pipeline.digits: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: " + ", ".join(f"{n:,} {split}" for split, n in counts.items()) + ", 10 classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
