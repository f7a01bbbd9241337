"""Loader workers' side: turn one BatchRequest (a rank's slice of a global batch) into tensors.

Random access into the tars: each worker keeps an LRU of (open file, member index) for the last
few shards it touched (a shuffle window spans 1-2 shards, so a small LRU hits almost always), so
its memory stays bounded over any number of epochs. Bad samples are dropped from the batch and
counted by reason; the batch then holds fewer rows (the trainer's loss takes variable sizes).
A sample is one read (its members lie side by side): one ranged request for a remote shard
(data_pipeline.remote, retried and resumed there); a read that still fails is counted as read_error
and named by shard URL and byte offset in the batch's "failed_reads".

With captions_per_sample K the batch holds K captions per image, image-major: rows i*K .. i*K+K-1 of
"tokens" (and of "text_vectors", when a store of locked-tower embeddings is given) are image i's.
With hard_negatives K > 0 "neg_tokens" [b, K, L] holds each image's K hard-negative captions
(data_pipeline/stream/hard_negatives.py). With a distillation teacher, its inputs or stored outputs ride along
(data_pipeline/stream/teacher.py).
"""
import hashlib
import os
from collections import Counter, OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from clipforge.data_pipeline import remote
from clipforge.data_pipeline.embeddings import VectorCache
from clipforge.data_pipeline.shards import HARD_NEGATIVES, IMAGE_EXTS, PRIMARY_CAPTIONS, ShardError, TarIndex, \
    all_captions, index_tar, sample_meta
from clipforge.data_pipeline.stream import hashing
from clipforge.data_pipeline.stream.hard_negatives import MISSING_NEGATIVES, pick as pick_negatives
from clipforge.data_pipeline.stream.caption_sources import CaptionWeights
from clipforge.data_pipeline.stream.decode import DecodeError, train_image
from clipforge.data_pipeline.stream.device_decode import ImageRows, plan_image
from clipforge.data_pipeline.stream.plan import BatchRequest
from clipforge.data_pipeline.stream.teacher import TeacherReader

# Reasons a sample is skipped (keys of loader.counters).
MISSING_IN_TAR = "missing_from_truncated_shard"  # the tar ends before this sample (cut copy)
MISSING_SAMPLE = "missing_from_shard"  # the tar is complete but holds fewer samples than its manifest says
UNREADABLE_SHARD = "unreadable_shard"  # the shard could not be opened or indexed any more
READ_ERROR = "read_error"  # an I/O error while reading the sample's bytes
MISSING_IMAGE = "missing_image"
MISSING_CAPTION = "missing_caption"
CORRUPT_IMAGE = "corrupt_image"
MISSING_VECTOR = "missing_stored_embedding"  # the store has no vector for this key/caption (stale store)


def sample_id(source_root: str, key: str) -> int:
    """A signed int64 identity of (dataset, key): equal for the same image drawn twice (resampled mode,
    or one dataset mixed in twice), so the loss never makes an image's own captions its negatives.
    Keys alone are not enough: two converted datasets both number their keys from 0."""
    root = source_root if remote.is_url(source_root) else os.path.realpath(source_root)
    digest = hashlib.blake2b(f"{root}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def caption_choice(num_captions: int, k: int, rng: np.random.Generator) -> List[int]:
    """K caption indices of one visit: distinct while the image has enough, cycled when it has fewer.
    K=1 keeps the single draw of earlier versions (same captions for the same seed)."""
    if k == 1:
        return [int(rng.integers(num_captions))]
    order = rng.permutation(num_captions)
    return [int(order[j % num_captions]) for j in range(k)]


class ShardCache:
    """LRU of open shards: (path) -> (file with pread, TarIndex), or the error opening it raised (returned,
    not raised: a re-raised exception grows its traceback): a shard that failed (after a remote shard's
    retries) is not tried again for each of its samples while it stays in the LRU. One per worker process,
    never shared."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._open: "OrderedDict[str, object]" = OrderedDict()

    def get(self, path: str) -> Union[Tuple[object, TarIndex], Exception]:
        if path not in self._open:
            try:
                index = index_tar(path)
                self._open[path] = (remote.open_shard(path), index)
            except (OSError, ShardError) as e:
                self._open[path] = e
            while len(self._open) > self.capacity:
                old = self._open.popitem(last=False)[1]
                if not isinstance(old, Exception):
                    old[0].close()
        self._open.move_to_end(path)
        return self._open[path]

    def __getstate__(self):  # a fresh (empty) cache in every worker process
        return {"capacity": self.capacity, "_open": OrderedDict()}


def _lines(data: bytes) -> List[str]:
    """A caption member's non-empty lines (one caption each)."""
    return [line.strip() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]


def _sample_bytes(handle, entry) -> Callable[[str], bytes]:
    """Read a sample's members in one go -> member(ext) gives one member's bytes."""
    spans = entry.members.values()
    start = min(offset for offset, _ in spans)
    end = max(offset + size for offset, size in spans)
    data = handle.pread(end - start, start)
    if len(data) != end - start:
        raise OSError(f"short read at offset {start}: {len(data)} of {end - start} bytes")
    return lambda ext: data[entry.members[ext][0] - start:sum(entry.members[ext]) - start]


def _failed_at(error: remote.RemoteReadError) -> str:
    return f"{error.url}@{error.offset}"


def _skipped(reason: str, failed_at: Optional[str] = None) -> tuple:
    """BatchDataset.load's answer for a sample that is not in the batch."""
    return None, reason, failed_at, None, None, None


class BatchDataset(torch.utils.data.Dataset):
    """dataset[request] -> {"images": uint8 [n,3,S,S], "tokens": int64 [n,L], "keys", "skipped", "request"}; with
    decode="gpu" the JPEGs and their crops instead of "images" (device_decode.ENCODED, decoded by the loader)."""

    def __init__(self, shard_paths: List[List[str]], *, seed: int, image_size: int,
                 tokenizer: Callable[[List[str]], torch.Tensor], cache_shards: int = 16,
                 source_roots: Optional[List[str]] = None, captions_per_sample: int = 1,
                 vector_paths: Optional[List[List[str]]] = None, vector_dim: int = 0,
                 json_caption_sources: Sequence[int] = (), crop_scale=(0.9, 1.0), hflip: bool = False,
                 caption_weights: CaptionWeights = CaptionWeights.of(None), hard_negatives: int = 0,
                 teacher: Optional[TeacherReader] = None, decode: str = "cpu"):
        """vector_paths: per source, per shard, the stored-embeddings file (data_pipeline.embeddings) whose
        vectors replace the captions' tokens; None = tokenise the captions. json_caption_sources: sources
        converted with --one-caption-per-txt, whose captions are KEY.json's list (read only for them).
        caption_weights: which caption source each visit reads (data_pipeline/stream/caption_sources.py).
        hard_negatives: K lines of KEY.neg.txt per sample (0 = none read). teacher: a distillation teacher's
        inputs or stored outputs per sample (data_pipeline/stream/teacher.py), None = none. decode: data.decode."""
        self.json_caption_sources = set(json_caption_sources)
        self.caption_weights = caption_weights
        self.shard_paths, self.seed, self.image_size = shard_paths, seed, image_size
        self.tokenizer = tokenizer
        self.cache = ShardCache(cache_shards)
        self.source_roots = source_roots or ["" for _ in shard_paths]
        self.captions_per_sample = captions_per_sample
        self.hard_negatives = hard_negatives
        self.crop_scale, self.hflip = tuple(crop_scale), hflip
        self.vector_paths, self.vector_dim = vector_paths, vector_dim  # dim: an all-bad batch is still [0, D]
        self.vectors = VectorCache()
        self.teacher = teacher
        self.decode = decode
        self._empty_tokens = None

    def _captions(self, member, entry, source: int, wanted: str) -> Tuple[List[str], str]:
        """(caption lines, the source they came from): `wanted`, else KEY.txt (KEY.json's list for sources
        converted with --one-caption-per-txt) when the sample has no such member or it is empty."""
        if wanted != PRIMARY_CAPTIONS and wanted in entry.members:
            lines = _lines(member(wanted))
            if lines:
                return lines, wanted
        lines = _lines(member("txt")) if "txt" in entry.members else []
        if source in self.json_caption_sources and "json" in entry.members:
            lines = all_captions(sample_meta(member("json")), lines)
        return lines, PRIMARY_CAPTIONS

    def load(self, position: int, source: int, shard: int, index: int, wanted: str = PRIMARY_CAPTIONS):
        """(key, [(caption index, caption)] * K, uint8 [3,S,S] (decode="gpu": a JPEG's device_decode.CropPlan),
        caption source read, KEY.neg.txt's lines or None, the live teacher's view of the image or None) of one
        sample, or _skipped(reason, failed_at): failed_at "URL@BYTE" names a remote read that failed after its
        retries; `wanted`: the caption source this visit asks for."""
        path = self.shard_paths[source][shard]
        opened = self.cache.get(path)
        if isinstance(opened, Exception):
            failed = _failed_at(opened) if isinstance(opened, remote.RemoteReadError) else None
            return _skipped(UNREADABLE_SHARD, failed)
        handle, tar_index = opened
        if index >= len(tar_index.samples):
            if tar_index.read_error:  # the header scan stopped there: the rest of the shard is unread
                return _skipped(READ_ERROR, _failed_at(tar_index.read_error))
            return _skipped(MISSING_IN_TAR if tar_index.truncated else MISSING_SAMPLE)
        entry = tar_index.samples[index]
        ext = next((e for e in IMAGE_EXTS if e in entry.members), None)
        if ext is None:
            return _skipped(MISSING_IMAGE)
        try:
            member = _sample_bytes(handle, entry)
        except remote.RemoteReadError as e:
            return _skipped(READ_ERROR, _failed_at(e))
        except OSError:
            return _skipped(READ_ERROR)
        captions, read_from = self._captions(member, entry, source, wanted)
        if not captions:
            return _skipped(MISSING_CAPTION)
        negatives = None
        if self.hard_negatives:
            negatives = _lines(member(HARD_NEGATIVES)) if HARD_NEGATIVES in entry.members else []
            if not negatives:
                return _skipped(MISSING_NEGATIVES)
        image_bytes = member(ext)
        # Per-visit randomness keyed by the global position: same crop and caption whatever the
        # worker, rank or resume point; a new choice in every epoch (new position).
        rng = hashing.rng(self.seed, hashing.SAMPLE_AUGMENT, position)
        chosen = [(c, captions[c]) for c in caption_choice(len(captions), self.captions_per_sample, rng)]
        try:
            prepare = plan_image if self.decode == "gpu" else train_image  # gpu: the same draws, decoded later
            image = prepare(image_bytes, ext, self.image_size, rng, self.crop_scale, self.hflip)
            view = self.teacher.view(image_bytes) if self.teacher is not None else None
        except DecodeError:
            return _skipped(CORRUPT_IMAGE)
        return entry.key, chosen, image, read_from, negatives, view

    def _vectors(self, source: int, shard: int, key: str, chosen) -> Optional[List[np.ndarray]]:
        stored = self.vectors.get(self.vector_paths[source][shard])
        rows = [stored.vector(key, c) for c, _ in chosen]
        return None if any(r is None for r in rows) else rows

    def __getitem__(self, request: BatchRequest) -> Dict:
        size = self.image_size
        images = ImageRows(len(request.items), size, self.decode)
        keys, ids, captions, caption_index, vectors, skipped, fallbacks = [], [], [], [], [], Counter(), Counter()
        failed_reads, negatives, padded, teacher_parts = Counter(), [], 0, []
        wanted = self.caption_weights.choose(self.seed, request.items[:, 0])
        for (position, source, shard, index), asked in zip(request.items.tolist(), wanted):
            key, chosen_or_reason, image, read_from, lines, view = self.load(position, source, shard, index, asked)
            if key is None:
                skipped[chosen_or_reason] += 1
                if image is not None:  # a remote read that failed after its retries: "URL@BYTE"
                    failed_reads[image] += 1
                continue
            if read_from != asked:
                fallbacks[asked] += 1
            rows = self._vectors(source, shard, key, chosen_or_reason) if self.vector_paths is not None else []
            part = None if self.teacher is None else \
                self.teacher.sample(source, shard, key, [c for c, _ in chosen_or_reason], view)
            if rows is None or (self.teacher is not None and part is None):
                skipped[MISSING_VECTOR] += 1
                continue
            vectors.extend(rows)
            if self.teacher is not None:
                teacher_parts.append(part)
            images.add(image)
            keys.append(key)
            ids.append(sample_id(self.source_roots[source], key))
            captions.extend(caption for _, caption in chosen_or_reason)
            caption_index.append([c for c, _ in chosen_or_reason])
            if lines is not None:
                negatives.extend(pick_negatives(lines, self.hard_negatives))
                padded += len(lines) < self.hard_negatives
        out = {**images.fields(), "keys": keys, "skipped": dict(skipped),
               "caption_fallbacks": dict(fallbacks), "failed_reads": dict(failed_reads),
               "sample_ids": torch.tensor(ids, dtype=torch.int64),
               "caption_index": torch.tensor(caption_index, dtype=torch.int64).view(len(keys), self.captions_per_sample),
               "request": request}
        if self.vector_paths is not None:  # the locked tower's outputs replace its inputs: no tokens needed
            out["text_vectors"] = torch.from_numpy(np.stack(vectors)) if vectors else torch.zeros(0, self.vector_dim)
        else:
            out["tokens"] = (self.tokenizer(captions) if captions else self._no_tokens()).long()
        if self.teacher is not None:
            out.update(self.teacher.collate(teacher_parts, captions))
        if self.hard_negatives:  # image-major like the captions: row i*K + j is image i's negative j
            tokens = (self.tokenizer(negatives) if negatives else self._no_tokens()).long()
            out["neg_tokens"] = tokens.view(len(keys), self.hard_negatives, tokens.shape[-1])
            out["negatives_padded"] = padded
        return out

    def _no_tokens(self) -> torch.Tensor:
        """An empty [0, L] token tensor (L of this tokenizer) for a batch whose samples were all bad."""
        if self._empty_tokens is None:
            self._empty_tokens = self.tokenizer([""])[:0]
        return self._empty_tokens
