"""Eval data: a shard dataset (or a raw folder / caption table converted on the fly) read as fixed global
batches, each rank reading only its contiguous share of them.

    data = open_eval_data("shards-val/")                    # or a COCO/Flickr folder, a CSV ...
    start, end = rank_share(data.num_samples, batch_size=256, rank=r, world=w)
    for batch in eval_loader(data, start, end, transform, batch_size=256):
        batch["images"], batch["captions"], batch["labels"], batch["keys"], batch["skipped"]

Batches are cut from the global sample order (batch b = samples [b*B, (b+1)*B)) and a rank gets a run of
whole batches, so every image is embedded in the same batch, with the same numerics, whatever the number
of ranks. A sample that cannot be used (no image, image does not decode, no caption, no label) is left
out of its batch and counted by reason, never dropped silently.
"""
import functools
import io
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from PIL import Image

from clipforge.data_pipeline import remote
from clipforge.data_pipeline.shards import ShardError, ShardSet, decode_sample, index_tar, open_shards, read_member
from clipforge.eval.errors import EvalDataError  # noqa: F401  (raised here; importable from here too)
from clipforge.eval.folders import FolderRange, ImageFolderSet


def _is_shard_spec(spec: str) -> bool:
    if remote.is_url(spec):  # a URL is read as shards as it is (raw data is converted from local files only)
        return True
    if os.path.isdir(spec):
        return any(os.path.isfile(os.path.join(spec, n)) for n in ("manifest.json", "sizes.json"))
    return spec.endswith(".tar") or "{" in spec


def open_eval_data(spec: str, convert_dir: Optional[str] = None, image_size: int = 256) -> ShardSet:
    """A shard dataset as is. Anything else (a raw folder, COCO/Flickr json, csv/tsv/parquet/jsonl) is
    converted into convert_dir with `clipforge convert`'s own code, when one is given (the CLI does; a
    library caller such as the trainer must pass shards)."""
    spec = os.fspath(spec)
    if not _is_shard_spec(spec):
        if not os.path.exists(spec):
            raise EvalDataError(f"--data {spec}: not found (give a shard dataset dir, a .tar / brace pattern, "
                                "or a raw folder / caption file to convert)")
        if convert_dir is None:
            raise EvalDataError(f"{spec}: not a shard dataset (no manifest.json / sizes.json); convert it with "
                                "`clipforge convert` or let `clipforge eval --data` convert it")
        from clipforge.data_pipeline.convert.api import convert
        from clipforge.data_pipeline.convert.options import ConvertError
        try:
            summary = convert([spec], convert_dir, image_size=image_size, progress=False)
        except ConvertError as e:
            raise EvalDataError(f"--data {spec}: cannot convert it to shards: {e}") from None
        if not summary.get("written"):
            raise EvalDataError(f"--data {spec}: converting it wrote no samples ({summary.get('reasons')})")
        spec = convert_dir
    try:
        return open_shards(spec)
    except ShardError as e:
        raise EvalDataError(str(e)) from None


def rank_share(num_samples: int, batch_size: int, rank: int, world: int) -> Tuple[int, int]:
    """[start, end) of the global samples this rank embeds: a contiguous run of whole batches
    (a rank may get none when there are fewer batches than ranks; it still joins every collective)."""
    num_batches = -(-num_samples // batch_size)
    first, last = rank * num_batches // world, (rank + 1) * num_batches // world
    return min(first * batch_size, num_samples), min(last * batch_size, num_samples)


@dataclass
class _Entry:
    shard_path: str
    shard_name: str
    index: object  # data_pipeline.shards.SampleIndex


class SampleRange(torch.utils.data.Dataset):
    """Samples [start, end) of a shard dataset, random access through the tar header index."""

    def __init__(self, data: ShardSet, start: int, end: int, transform: Callable, label_key: Optional[str]):
        self.transform, self.label_key = transform, label_key
        self.entries: List[_Entry] = []
        offset = 0
        for shard in data.shards:
            lo, hi = max(start, offset), min(end, offset + shard.samples)
            if lo < hi:
                index = index_tar(shard.path)
                if index.read_error:  # metrics over part of the data would not be comparable: refuse
                    raise EvalDataError(f"{index.read_error}; the shard cannot be read in full, try again later")
                if len(index.samples) != shard.samples:
                    raise EvalDataError(f"{shard.path}: holds {len(index.samples)} samples but the dataset's "
                                        f"manifest says {shard.samples}; run `clipforge verify` on it")
                self.entries += [_Entry(shard.path, shard.name, s) for s in index.samples[lo - offset:hi - offset]]
            offset += shard.samples
        self._files: Dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _file(self, path: str):
        if path not in self._files:  # one handle per shard per worker process
            self._files[path] = remote.open_sequential(path)
        return self._files[path]

    def _label(self, f, entry, meta: dict):
        if self.label_key and self.label_key in meta:
            return meta[self.label_key]
        if "cls" in entry.members:
            return read_member(f, entry.members["cls"]).decode("utf-8").strip()
        return None

    def __getitem__(self, n: int) -> dict:
        entry = self.entries[n]
        f = self._file(entry.shard_path)
        try:
            sample = decode_sample(f, entry.index)
            label = self._label(f, entry.index, sample["meta"])
        except remote.RemoteReadError as e:  # counted like any unusable sample; the reason names the byte
            return {"key": entry.index.key, "shard": entry.shard_name, "captions": [], "label": None,
                    "image": None, "reason": f"read failed after retries at byte {e.offset} of {e.url}"}
        out = {"key": sample["key"], "shard": entry.shard_name, "captions": sample["captions"],
               "label": label, "image": None, "reason": None}
        if sample["image_bytes"] is None:
            out["reason"] = "no image member"
            return out
        try:
            with Image.open(io.BytesIO(sample["image_bytes"])) as im:
                out["image"] = self.transform(im.convert("RGB"))
        except Exception as e:  # any decoder error is data, not a crash: counted by reason
            out["reason"] = f"image does not decode ({type(e).__name__})"
        return out


def collate(items: List[dict], need: str) -> dict:
    """Stack the usable samples; need = "captions" (retrieval), "first_caption" (CLIP score: only the primary
    caption is embedded, so a 5-caption dataset costs one text forward per image) or "label" (classification)."""
    keep, skipped = [], []
    for it in items:
        reason = it["reason"]
        if need == "first_caption":
            it["captions"] = it["captions"][:1]
        if reason is None and need in ("captions", "first_caption") and not it["captions"]:
            reason = "no caption"
        if reason is None and need == "label" and it["label"] is None:
            reason = "no label"
        (skipped if reason else keep).append((it, reason))
    images = torch.stack([it["image"] for it, _ in keep]) if keep else torch.zeros(0)
    return {"images": images, "captions": [it["captions"] for it, _ in keep],
            "labels": [it["label"] for it, _ in keep], "keys": [it["key"] for it, _ in keep],
            "skipped": [(reason, f"{it['shard']}:{it['key']}") for it, reason in skipped]}


def eval_loader(data: Union[ShardSet, ImageFolderSet], start: int, end: int, transform: Callable, batch_size: int,
                need: str, label_key: Optional[str] = "label", workers: int = 0):
    """Batches of samples [start, end) in order; start must be a multiple of batch_size (rank_share's)."""
    ranged = FolderRange if isinstance(data, ImageFolderSet) else SampleRange
    dataset = ranged(data, start, end, transform, label_key)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       collate_fn=functools.partial(collate, need=need))
