"""torchvision-style ImageFolder eval data: DIR/<class>/**/*.jpg, class index = position of the folder name
in sorted order.

    data = open_image_folder("pets/test")
    data.classes, data.num_samples, data.samples[0]   # ("pets/test/cat/1.jpg", 0)

The file list and class order are torchvision's own (`torchvision.datasets.folder.make_dataset`), so a
folder gives the same samples, in the same order, as CLIP_benchmark's ImageFolder datasets. Images are read
from the original files (no re-encoding), through the same batch machinery as shards (eval.datasets).
"""
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from clipforge.eval.errors import EvalDataError


@dataclass
class ImageFolderSet:
    root: str
    classes: List[str]
    samples: List[Tuple[str, int]]  # (file path, class index), torchvision's order

    @property
    def spec(self) -> str:
        return self.root

    @property
    def num_samples(self) -> int:
        return len(self.samples)


def looks_like_image_folder(path: str) -> bool:
    """A dir whose sub-folders hold images and which has no image files of its own."""
    if not os.path.isdir(path):
        return False
    entries = list(os.scandir(path))
    if any(e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS) for e in entries):
        return False
    return any(e.is_dir() for e in entries)


def open_image_folder(root: str) -> ImageFolderSet:
    classes, class_to_idx = find_classes(root)
    try:
        samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:  # torchvision: a class folder without images
        raise EvalDataError(f"{root}: {e}") from None
    return ImageFolderSet(root, classes, samples)


class FolderRange(torch.utils.data.Dataset):
    """Samples [start, end) of an ImageFolderSet, as eval.datasets.SampleRange items."""

    def __init__(self, data: ImageFolderSet, start: int, end: int, transform: Callable,
                 label_key: Optional[str] = None):
        self.data, self.transform = data, transform
        self.items = data.samples[start:end]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, n: int) -> dict:
        path, label = self.items[n]
        key = os.path.relpath(path, self.data.root)
        out = {"key": key, "shard": os.path.basename(self.data.root), "captions": [], "label": label,
               "image": None, "reason": None}
        try:
            with Image.open(path) as im:
                out["image"] = self.transform(im.convert("RGB"))
        except Exception as e:  # an unreadable file is data, counted by reason like a bad shard member
            out["reason"] = f"image does not decode ({type(e).__name__})"
        return out
