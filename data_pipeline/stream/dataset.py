"""Loader workers' side: turn one BatchRequest (a rank's slice of a global batch) into tensors.

Random access into the tars: each worker keeps an LRU of (open file, member index) for the last
few shards it touched (a shuffle window spans 1-2 shards, so a small LRU hits almost always), so
its memory stays bounded over any number of epochs. Bad samples are dropped from the batch and
counted by reason; the batch then holds fewer rows (the trainer's loss takes variable sizes).
"""
import os
from collections import Counter, OrderedDict
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from data_pipeline.shards import IMAGE_EXTS, ShardError, TarIndex, index_tar
from data_pipeline.stream import hashing
from data_pipeline.stream.decode import DecodeError, train_image
from data_pipeline.stream.plan import BatchRequest

# Reasons a sample is skipped (keys of loader.counters).
MISSING_IN_TAR = "missing_from_truncated_shard"  # the tar ends before this sample (cut copy)
MISSING_SAMPLE = "missing_from_shard"  # the tar is complete but holds fewer samples than its manifest says
UNREADABLE_SHARD = "unreadable_shard"  # the shard could not be opened or indexed any more
READ_ERROR = "read_error"  # an I/O error while reading the sample's bytes
MISSING_IMAGE = "missing_image"
MISSING_CAPTION = "missing_caption"
CORRUPT_IMAGE = "corrupt_image"


class ShardCache:
    """LRU of open shards: (path) -> (fd, TarIndex). One per worker process, never shared."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._open: "OrderedDict[str, Tuple[int, TarIndex]]" = OrderedDict()

    def get(self, path: str) -> Tuple[int, TarIndex]:
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        index = index_tar(path)
        fd = os.open(path, os.O_RDONLY)
        self._open[path] = (fd, index)
        while len(self._open) > self.capacity:
            old_fd, _ = self._open.popitem(last=False)[1]
            os.close(old_fd)
        return fd, index

    def __getstate__(self):  # a fresh (empty) cache in every worker process
        return {"capacity": self.capacity, "_open": OrderedDict()}


def _read(fd: int, span: Tuple[int, int]) -> bytes:
    offset, size = span
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"short read at offset {offset}: {len(data)} of {size} bytes")
    return data


class BatchDataset(torch.utils.data.Dataset):
    """dataset[request] -> {"images": uint8 [n,3,S,S], "tokens": int64 [n,L], "keys", "skipped", "request"}."""

    def __init__(self, shard_paths: List[List[str]], *, seed: int, image_size: int,
                 tokenizer: Callable[[List[str]], torch.Tensor], cache_shards: int = 16):
        self.shard_paths, self.seed, self.image_size = shard_paths, seed, image_size
        self.tokenizer = tokenizer
        self.cache = ShardCache(cache_shards)
        self._empty_tokens = None

    def load(self, position: int, source: int, shard: int, index: int):
        """(key, caption, uint8 [3,S,S]) of one sample, or (None, reason, None) when it is bad."""
        path = self.shard_paths[source][shard]
        try:
            fd, tar_index = self.cache.get(path)
        except (OSError, ShardError):
            return None, UNREADABLE_SHARD, None
        if index >= len(tar_index.samples):
            return None, MISSING_IN_TAR if tar_index.truncated else MISSING_SAMPLE, None
        entry = tar_index.samples[index]
        ext = next((e for e in IMAGE_EXTS if e in entry.members), None)
        if ext is None:
            return None, MISSING_IMAGE, None
        try:
            text = _read(fd, entry.members["txt"]).decode("utf-8", errors="replace") if "txt" in entry.members else ""
            captions = [line.strip() for line in text.splitlines() if line.strip()]
            if not captions:
                return None, MISSING_CAPTION, None
            image_bytes = _read(fd, entry.members[ext])
        except OSError:
            return None, READ_ERROR, None
        # Per-visit randomness keyed by the global position: same crop and caption whatever the
        # worker, rank or resume point; a new choice in every epoch (new position).
        rng = hashing.rng(self.seed, hashing.SAMPLE_AUGMENT, position)
        caption = captions[int(rng.integers(len(captions)))]
        try:
            image = train_image(image_bytes, ext, self.image_size, rng)
        except DecodeError:
            return None, CORRUPT_IMAGE, None
        return entry.key, caption, image

    def __getitem__(self, request: BatchRequest) -> Dict:
        size = self.image_size
        images = np.empty((len(request.items), 3, size, size), dtype=np.uint8)
        keys, captions, skipped = [], [], Counter()
        for position, source, shard, index in request.items.tolist():
            key, caption_or_reason, image = self.load(position, source, shard, index)
            if key is None:
                skipped[caption_or_reason] += 1
                continue
            images[len(keys)] = image
            keys.append(key)
            captions.append(caption_or_reason)
        tokens = self.tokenizer(captions) if captions else self._no_tokens()
        return {"images": torch.from_numpy(images[:len(keys)]), "tokens": tokens.long(), "keys": keys,
                "skipped": dict(skipped), "request": request}

    def _no_tokens(self) -> torch.Tensor:
        """An empty [0, L] token tensor (L of this tokenizer) for a batch whose samples were all bad."""
        if self._empty_tokens is None:
            self._empty_tokens = self.tokenizer([""])[:0]
        return self._empty_tokens
