"""Tiny eval datasets, the same images in each layout eval reads: CLIP_benchmark's webdataset dirs
(classification and retrieval), a torchvision ImageFolder, clipforge shards with a label field."""
import io
import json
import tarfile
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

CLASSES = ["red", "green", "blue", "yellow", "purple", "cyan"]
RGB = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 230, 20), (150, 20, 160), (20, 210, 210)]
FORMATS = ("jpg", "webp", "png")


def images(n: int, seed: int) -> List[Tuple[int, str, bytes]]:
    """(class index, format, encoded bytes): a coloured square on noise, JPEG / WebP / PNG in turn."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % len(CLASSES)
        pix = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        x, y = rng.integers(0, 24, 2)
        pix[y:y + 24, x:x + 24] = RGB[label]
        fmt = FORMATS[i % len(FORMATS)]
        buf = io.BytesIO()
        Image.fromarray(pix).save(buf, format={"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}[fmt], quality=90)
        out.append((label, fmt, buf.getvalue()))
    return out


def _tar(path: Path, members: List[Tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def write_wds(root: Path, splits: dict, per_shard: int = 10, retrieval: bool = False,
              templates=("a photo of a {c} square.", "a {c} thing.")) -> Path:
    """CLIP_benchmark's layout: root/<split>/{0..n-1}.tar + nshards.txt, classnames.txt, templates, type."""
    for split, items in splits.items():
        (root / split).mkdir(parents=True)
        chunks = [items[a:a + per_shard] for a in range(0, len(items), per_shard)]
        for n, chunk in enumerate(chunks):
            members = []
            for i, (label, fmt, data) in enumerate(chunk):
                key = f"s{n * per_shard + i:07d}"
                members.append((f"{key}.{fmt}", data))
                second = "txt" if retrieval else "cls"
                text = f"a {CLASSES[label]} square\nsomething {CLASSES[label]}" if retrieval else str(label)
                members.append((f"{key}.{second}", text.encode()))
            _tar(root / split / f"{n}.tar", members)
        (root / split / "nshards.txt").write_text(f"{len(chunks)}\n")
    (root / "dataset_type.txt").write_text("retrieval\n" if retrieval else "classification\n")
    if not retrieval:
        (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return root


def write_image_folder(root: Path, items) -> Path:
    for i, (label, fmt, data) in enumerate(items):
        d = root / CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img{i:04d}.{fmt}").write_bytes(data)
    return root


def write_labelled_shards(root: Path, items, field: str = "colour") -> Path:
    """clipforge shards (sizes.json) whose KEY.json holds the class name under `field`."""
    root.mkdir(parents=True)
    members = []
    for i, (label, fmt, data) in enumerate(items):
        members += [(f"{i:06d}.{fmt}", data), (f"{i:06d}.txt", f"a {CLASSES[label]} square".encode()),
                    (f"{i:06d}.json", json.dumps({field: CLASSES[label]}).encode())]
    _tar(root / "shard-000000.tar", members)
    (root / "sizes.json").write_text(json.dumps({"shard-000000.tar": len(items)}))
    return root
