"""Stored embeddings beside a shard dataset (DESIGN.md "Stored embeddings"): the format's one home.

    SHARDS/embeddings/<name>/
      manifest.json       written last; identity of the model, the shard dataset it was computed against
      shard-000000.npz    keys [n] (str), offsets int64 [n+1], text float32 [sum captions, dim],
                          and (a teacher's store: tower "image+text") image float32 [n, dim]

Caption c of sample i (line c of KEY.txt) is row offsets[i] + c of `text`; row i of `image` is sample i's image.
Written by the trainer's locked-tower cache (pretrain/text_cache.py: text only) and by `clipforge embed`
(pretrain/embed.py: a distillation teacher's image and caption embeddings), read by the train loader
(data_pipeline/stream/dataset.py, data_pipeline/stream/teacher.py). Torch-free: numpy only.

A store is valid for one (shard dataset, model): the manifest records the sha256 of the shard
dataset's manifest.json (or sizes.json) and the caller's model identity; `open_store` refuses any other
pair with one line (StaleEmbeddings), so a cache can never silently feed vectors of other captions or
another tower.
"""
import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from clipforge.atomic import atomic_path, write_atomic
from clipforge.data_pipeline import remote
from clipforge.errors import UserError

FORMAT = "clipforge-embeddings"
VERSION = 1


class StaleEmbeddings(UserError, ValueError):
    """The stored embeddings are missing, partial, or belong to other shards or another model."""


def dataset_root(spec: str) -> str:
    """The folder that holds a shard dataset's manifest: the dir itself, or the tars' folder (a URL's too)."""
    root = remote.listed_root(spec)
    return root if root is not None else remote.dirname(spec.split("{")[0])


def dataset_fingerprint(spec: str) -> str:
    """sha256 of the shard dataset's manifest.json (or sizes.json): changes whenever a shard does."""
    root = dataset_root(spec)
    for name in ("manifest.json", "sizes.json"):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
    raise StaleEmbeddings(f"{root}: no manifest.json or sizes.json to key stored embeddings on")


class RemoteStoreUnsupported(UserError, ValueError):
    """Stored embeddings live beside the shards, and a dataset at a URL is only read (data_pipeline.remote)."""


def store_dir(spec: str, name: str) -> str:
    if remote.is_url(spec):  # refused before any path is made of the URL (it would become a local "s3:" folder)
        raise RemoteStoreUnsupported(
            f"{spec}: stored embeddings (clipforge embed, the locked text tower's cache model.text_cache) are kept "
            "beside the shards, which a URL does not allow yet; copy the dataset to a local folder, or turn the "
            "cache off (model.text_cache=false)")
    return os.path.join(dataset_root(spec), "embeddings", name)


def npz_name(tar_name: str) -> str:
    return os.path.splitext(tar_name)[0] + ".npz"


def write_shard(directory: str, tar_name: str, keys: Sequence[str], captions_per_key: Sequence[int],
                text: np.ndarray, image: Optional[np.ndarray] = None) -> None:
    """One shard's vectors (atomically: a reader never sees half a file). text: [sum captions, dim]; image:
    [len(keys), dim] or None (a text-only store)."""
    offsets = np.concatenate([[0], np.cumsum(np.asarray(captions_per_key, dtype=np.int64))])
    if offsets[-1] != text.shape[0]:
        raise ValueError(f"{tar_name}: {offsets[-1]} captions but {text.shape[0]} vectors")
    if image is not None and image.shape[0] != len(keys):
        raise ValueError(f"{tar_name}: {len(keys)} keys but {image.shape[0]} image vectors")
    arrays = {} if image is None else {"image": np.ascontiguousarray(image, np.float32)}
    os.makedirs(directory, exist_ok=True)
    with atomic_path(os.path.join(directory, npz_name(tar_name))) as tmp, open(tmp, "wb") as f:
        np.savez(f, keys=np.asarray(list(keys), dtype=str), offsets=offsets,
                 text=np.ascontiguousarray(text, np.float32), **arrays)


def write_manifest(directory: str, *, spec: str, model: Dict, tar_names: Sequence[str], dim: int,
                   tower: str = "text") -> None:
    """Last, once every shard file is in place: its presence is what makes the store complete."""
    manifest = {"format": FORMAT, "version": VERSION, "model": model, "tower": tower, "dtype": "float32",
                "dim": int(dim), "shards_sha256": dataset_fingerprint(spec),
                "shards": [{"tar": name, "file": npz_name(name)} for name in tar_names]}
    write_atomic(os.path.join(directory, "manifest.json"), json.dumps(manifest, indent=1, sort_keys=True))


def check_store(spec: str, name: str, model: Dict, tar_names: Sequence[str], fix: Optional[str] = None) -> Dict:
    """-> the store's manifest, or StaleEmbeddings saying what does not match and what to do (`fix`: how to
    rewrite it; default: delete it, the trainer recomputes it)."""
    directory = store_dir(spec, name)
    path = os.path.join(directory, "manifest.json")
    fix = fix or f"delete {directory} to recompute it"
    if not os.path.isfile(path):
        raise StaleEmbeddings(f"{directory}: no manifest.json (missing or partial store); {fix}")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise StaleEmbeddings(f"{path}: not a {FORMAT} v{VERSION} manifest; {fix}")
    if manifest["shards_sha256"] != dataset_fingerprint(spec):
        raise StaleEmbeddings(f"{directory}: computed for other shards (the dataset's manifest changed); {fix}")
    if manifest["model"] != model:
        raise StaleEmbeddings(f"{directory}: computed with another model ({manifest['model'].get('sha256', '?')[:12]} "
                              f"vs {model.get('sha256', '?')[:12]}); {fix}")
    listed = [s["tar"] for s in manifest["shards"]]
    if sorted(listed) != sorted(tar_names):
        raise StaleEmbeddings(f"{directory}: lists {len(listed)} shards, the dataset has {len(tar_names)}; {fix}")
    for entry in manifest["shards"]:
        if not os.path.isfile(os.path.join(directory, entry["file"])):
            raise StaleEmbeddings(f"{directory}: {entry['file']} is missing (partial store); {fix}")
    return manifest


@dataclass
class ShardVectors:
    rows: Dict[str, int]  # key -> first row
    counts: Dict[str, int]  # key -> captions stored
    text: np.ndarray  # float32 [sum captions, dim]
    index: Optional[Dict[str, int]] = None  # key -> its sample's row of `image`
    image: Optional[np.ndarray] = None  # float32 [n, dim] (a teacher's store), else None

    def vector(self, key: str, caption: int) -> Optional[np.ndarray]:
        if key not in self.rows or not 0 <= caption < self.counts[key]:
            return None
        return self.text[self.rows[key] + caption]

    def image_vector(self, key: str) -> Optional[np.ndarray]:
        if self.image is None or key not in self.index:
            return None
        return self.image[self.index[key]]


def load_shard(path: str) -> ShardVectors:
    with np.load(path) as data:
        keys, offsets, text = [str(k) for k in data["keys"]], data["offsets"], data["text"]
        image = data["image"] if "image" in data.files else None
    return ShardVectors(rows={k: int(offsets[i]) for i, k in enumerate(keys)},
                        counts={k: int(offsets[i + 1] - offsets[i]) for i, k in enumerate(keys)}, text=text,
                        index={k: i for i, k in enumerate(keys)}, image=image)


class VectorCache:
    """LRU of loaded shard files, one per loader worker (a worker touches 1-2 shards at a time)."""

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._loaded: "OrderedDict[str, ShardVectors]" = OrderedDict()

    def get(self, path: str) -> ShardVectors:
        if path in self._loaded:
            self._loaded.move_to_end(path)
        else:
            self._loaded[path] = load_shard(path)
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
        return self._loaded[path]

    def __getstate__(self):  # an empty cache in every worker process
        return {"capacity": self.capacity, "_loaded": OrderedDict()}


def shard_files(spec: str, name: str, tar_names: List[str]) -> List[str]:
    directory = store_dir(spec, name)
    return [os.path.join(directory, npz_name(t)) for t in tar_names]
