"""What the train loader hands a distillation teacher (loss.distill, pretrain/distill.py), per image and caption.

    live = TeacherInputs(view=teacher_view, tokenizer=teacher_tokenizer, image_size=48)   # the teacher runs every step
    stored = TeacherInputs(store=(name, identity), fix="run `clipforge embed ...`")        # "reinforced shards"
    loader = build_train_loader(..., teacher=live_or_stored)

Live, a batch carries the teacher's inputs:
    batch["teacher_images"]          float32 [b, 3, S_t, S_t]: the teacher's own val transform of each image's bytes
    batch["teacher_tokens"]          int64 [b*K, L_t]: the visit's K captions in the teacher's tokenizer, image-major
Stored, its outputs, read from SHARDS/embeddings/<name>/ (data_pipeline/embeddings.py, written by `clipforge embed`):
    batch["teacher_image_features"]  float32 [b, D]
    batch["teacher_text_features"]   float32 [b*K, D]: the store's row of (KEY, caption index) for each chosen caption
A sample the store lacks (its key, or one of its chosen caption lines) is skipped and counted as
missing_stored_embedding, as with the locked text tower's store.

The teacher sees each image as eval shows it to that model (its preprocess_cfg: open_clip's val resize and centre
crop at its own size, its own mean/std), never the student's random crop. So what `clipforge embed` stored is
exactly what the live teacher computes whatever the student's augmentation (data.crop_scale, data.hflip), one
vector per image suffices, and a teacher of another resolution than the student's needs nothing more. The price:
under random crops the target describes the whole image, not the student's view of it (MobileCLIP stores one
teacher embedding per stored augmentation instead; not done here).
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from clipforge.data_pipeline.embeddings import VectorCache


@dataclass
class TeacherInputs:
    # live: image bytes -> the teacher's float [3, S_t, S_t] (raises DecodeError); captions -> int64 [n, L_t] tokens
    view: Optional[Callable[[bytes], torch.Tensor]] = None
    tokenizer: Optional[Callable[[List[str]], torch.Tensor]] = None
    image_size: int = 0  # S_t: the shape of an empty batch's teacher_images
    # stored: (store name, teacher identity) of SHARDS/embeddings/<name>/ beside every source
    store: Optional[Tuple[str, Dict]] = None
    fix: Optional[str] = None  # how to rewrite a store that does not match (the `clipforge embed` line)


class TeacherReader:
    """A loader worker's side of TeacherInputs: `view` per image, `sample` per sample, `collate` per batch.
    store_paths: per source, per shard, the stored-embeddings file (stored mode); dim: the stored width."""

    def __init__(self, inputs: TeacherInputs, store_paths: Optional[List[List[str]]] = None, dim: int = 0):
        self.inputs, self.store_paths, self.dim = inputs, store_paths, dim
        self.vectors = VectorCache()

    @property
    def live(self) -> bool:
        return self.inputs.store is None

    def view(self, image_bytes: bytes) -> Optional[torch.Tensor]:
        """The teacher's pixels of one image (live), or None (stored: nothing to compute)."""
        return self.inputs.view(image_bytes) if self.live else None

    def sample(self, source: int, shard: int, key: str, captions: Sequence[int], view: Optional[torch.Tensor]):
        """The sample's part of the batch: its view (live), or (image row, caption rows) read from the store;
        None when the store lacks one of them (the sample is skipped)."""
        if self.live:
            return view
        stored = self.vectors.get(self.store_paths[source][shard])
        image = stored.image_vector(key)
        text = [stored.vector(key, c) for c in captions]
        if image is None or any(t is None for t in text):
            return None
        return image, text

    def collate(self, parts: list, captions: List[str]) -> Dict[str, torch.Tensor]:
        """parts: the samples' `sample` results in batch order; captions: the batch's chosen captions (b*K)."""
        if self.live:
            size = self.inputs.image_size
            images = torch.stack(parts) if parts else torch.zeros(0, 3, size, size)
            tokens = self.inputs.tokenizer(captions if captions else [""]).long()
            return {"teacher_images": images, "teacher_tokens": tokens if captions else tokens[:0]}
        empty = np.zeros((0, self.dim), np.float32)
        image = np.stack([p[0] for p in parts]) if parts else empty
        text = np.stack([t for p in parts for t in p[1]]) if parts else empty
        return {"teacher_image_features": torch.from_numpy(image), "teacher_text_features": torch.from_numpy(text)}
