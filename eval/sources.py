"""Which eval dataset a path names, and what it brings along (class names, templates, task type).

    src = open_source("wds_vtab-cifar10", split="test")    # CLIP_benchmark's webdataset layout, as published
    src.data        # a ShardSet (shards, wds) or an ImageFolderSet: what eval.api embeds
    src.classnames  # classnames.txt (wds, or beside an ImageFolder) / the folder names; None for plain shards
    src.templates   # zeroshot_classification_templates.txt when the dataset ships one
    src.dataset_type  # "retrieval" / "classification" (wds dataset_type.txt), None when unknown

Layouts, tried in this order:
- CLIP_benchmark webdataset: DIR/{test,train}/{0..n-1}.tar with DIR/<split>/nshards.txt, DIR/classnames.txt,
  DIR/zeroshot_classification_templates.txt, DIR/dataset_type.txt (CLIP_benchmark's build_wds_dataset).
  Members KEY.webp|png|jpg|jpeg + KEY.cls (class index) or KEY.txt (captions, one per line). DIR may also
  be the split folder itself.
- clipforge shards (manifest.json / sizes.json, a .tar, a brace pattern): the split is the dataset itself.
- ImageFolder (only when labels are wanted): DIR/<split>/<class>/... when DIR/<split> exists, else
  DIR/<class>/...; class names from DIR/classnames.txt when present (one per line, sorted-folder order).
- anything else: None, raw data (a caption folder / table) for eval.datasets.open_eval_data to convert.
"""
import os
from dataclasses import dataclass
from typing import List, Optional, Union

from clipforge.data_pipeline import remote
from clipforge.data_pipeline.shards import Shard, ShardSet, index_tar
from clipforge.eval.datasets import EvalDataError, _is_shard_spec, open_eval_data
from clipforge.eval.folders import ImageFolderSet, looks_like_image_folder, open_image_folder
from clipforge.eval.templates import _normalise


@dataclass
class EvalSource:
    data: Union[ShardSet, ImageFolderSet]
    layout: str  # "clip_benchmark-wds" | "clipforge-shards" | "image-folder"
    name: str
    classnames: Optional[List[str]] = None
    templates: Optional[List[str]] = None
    dataset_type: Optional[str] = None


def _lines(path: str) -> Optional[List[str]]:
    """A text file's stripped lines (CLIP_benchmark keeps every line; a trailing newline adds none)."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f.read().splitlines()]


def _open_wds(root: str, split_dir: str) -> ShardSet:
    text = _lines(os.path.join(split_dir, "nshards.txt")) or [""]
    try:
        n = int(text[0])
    except ValueError:
        raise EvalDataError(f"{split_dir}/nshards.txt: expected the number of shards, got {text[0]!r}") from None
    paths = [os.path.join(split_dir, f"{i}.tar") for i in range(n)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise EvalDataError(f"{split_dir}: nshards.txt says {n} shards but {len(missing)} are missing "
                            f"(e.g. {missing[0]}); download the whole split")
    shards = []
    for p in paths:
        index = index_tar(p)
        if index.truncated:
            raise EvalDataError(f"{p}: the tar is cut short (partial download?); fetch it again")
        shards.append(Shard(p, os.path.basename(p), len(index.samples)))
    return ShardSet(split_dir, shards, None)


def _wds_source(root: str, split: str, name: str) -> EvalSource:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        have = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "nshards.txt")))
        raise EvalDataError(f"{root}: no split {split!r} (has: {', '.join(have) or 'none'})")
    kind = (_lines(os.path.join(root, "dataset_type.txt")) or ["classification"])[0].lower()
    templates = _lines(os.path.join(root, "zeroshot_classification_templates.txt"))
    if templates is not None:
        templates = [_normalise(t, f"{root}/zeroshot_classification_templates.txt") for t in templates if t]
    return EvalSource(_open_wds(root, split_dir), "clip_benchmark-wds", name,
                      _lines(os.path.join(root, "classnames.txt")), templates, kind)


def _folder_source(path: str, split: str, name: str) -> Optional[EvalSource]:
    below = os.path.join(path, split)
    folder = below if looks_like_image_folder(below) else path if looks_like_image_folder(path) else None
    if folder is None:
        return None
    data = open_image_folder(folder)
    names = _lines(os.path.join(path, "classnames.txt"))
    if names is not None:
        names = [n for n in names if n]
        if len(names) != len(data.classes):
            raise EvalDataError(f"{path}/classnames.txt: {len(names)} names for {len(data.classes)} class "
                                f"folders ({', '.join(data.classes[:3])} ...); one name per folder, sorted order")
    return EvalSource(data, "image-folder", name, names or list(data.classes), None, "classification")


def open_source(path: str, split: str = "test", labels: bool = False,
                name: Optional[str] = None) -> Optional[EvalSource]:
    """None when `path` is raw data (a folder of captioned images, a caption table) that must be converted
    to shards first (the CLI does that once, on rank 0). labels=True (classification, linear probe) lets a
    folder of class folders be an ImageFolder."""
    path = os.fspath(path)
    name = name or os.path.basename(os.path.normpath(remote.listed_root(path) or path.split("{")[0])) or path
    if os.path.isfile(os.path.join(path, "nshards.txt")):  # one split dir of a wds dataset: that split
        return _wds_source(os.path.dirname(os.path.abspath(path)), os.path.basename(os.path.normpath(path)), name)
    if os.path.isfile(os.path.join(path, split, "nshards.txt")) or os.path.isfile(
            os.path.join(path, "dataset_type.txt")):
        return _wds_source(path, split, name)
    if _is_shard_spec(path):
        return EvalSource(open_eval_data(path), "clipforge-shards", name)
    if labels and os.path.isdir(path):
        return _folder_source(path, split, name)
    return None
