"""Typed config of the streaming loader (the `data:` section of a run config).

Torch-free on purpose: `launch` validates configs on login nodes where torch is absent.
"""
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from clipforge.errors import UserError

LOADER_MODES = ("epoch", "resampled")
DECODE_MODES = ("cpu", "gpu")


class DataConfigError(UserError, ValueError):
    """A data.* setting is wrong; the message names the key and what is allowed."""

@dataclass
class SourceConfig:
    # A shard dataset dir (with manifest.json / sizes.json) or a brace pattern of tars
    # ("data/shard-{000000..000127}.tar").
    path: str = ""
    # Relative sampling weight when several sources are mixed; normalised over all sources.
    weight: float = 1.0


@dataclass
class DataConfig:
    sources: List[SourceConfig] = field(default_factory=list)
    # epoch: every sample once per epoch, run length derived from the manifest sizes.
    # resampled: infinite, with replacement (source by weight; shards drawn with replacement, each
    # equally likely, then windowed-shuffled: every sample equally likely, reads stay local).
    mode: str = "epoch"
    # Samples are permuted inside windows of this many consecutive samples (after a seeded
    # shard shuffle): the same mixing as a webdataset shuffle buffer of this size, but
    # stateless, so a resumed run sees exactly the same order.
    shuffle_window: int = 4096
    workers: int = 2
    # Batches each worker prepares ahead (torch DataLoader prefetch_factor).
    prefetch: int = 2
    # Optional held-out shard dataset for periodic retrieval eval during training.
    val_path: Optional[str] = None
    # Captions of an image per visit (distinct lines of KEY.txt, seeded; cycled when an image has fewer).
    # The loss treats all of them as positives of the image (pretrain/loss.py), never as its negatives.
    captions_per_sample: int = 1
    # NegCLIP hard negatives per image (0 = off): the first K lines of KEY.neg.txt (convert --neg-caption-col),
    # cycled when a sample has fewer; batch["neg_tokens"] [b, K, L]. Scored against their own image only, as its
    # negatives (pretrain/loss.py). A sample without KEY.neg.txt is skipped, counted (missing_hard_negatives).
    hard_negatives: int = 0
    # Train augmentation: RandomResizedCrop area range (open_clip's default 0.9-1.0) and a horizontal
    # flip with probability 1/2 (off by default, as in open_clip). Both seeded per sample position.
    crop_scale: List[float] = field(default_factory=lambda: [0.9, 1.0])
    hflip: bool = False
    # Caption source per visit, by weight: member extension -> weight, e.g. {txt: 0.5, synthetic.txt: 0.5}
    # (KEY.txt and KEY.synthetic.txt from convert --caption-col original --caption-col synthetic; open_clip's
    # --json-text-key-probs). Seeded by sample position (data_pipeline/stream/caption_sources.py). null = KEY.txt.
    caption_weights: Optional[Dict[str, float]] = None
    # Where train images are decoded, cropped and resized: cpu = in the loader workers (the reference); gpu = the
    # workers hand out the JPEG bytes and each sample's crop, and the batch is decoded on the rank's CUDA device
    # with the same crop and flip (data_pipeline/stream/device_decode.py; docs/loader.md for the pixel tolerance).
    decode: str = "cpu"

    def validate(self) -> None:
        if self.mode not in LOADER_MODES:
            raise DataConfigError(f"data.mode={self.mode!r}: allowed values are {', '.join(LOADER_MODES)}")
        if not self.sources:
            raise DataConfigError("data.sources is empty: give at least one {path: DIR_OR_PATTERN, weight: 1.0}")
        for i, source in enumerate(self.sources):
            if not source.path:
                raise DataConfigError(f"data.sources[{i}].path is empty: give a shard dataset dir or a tar brace pattern")
            if not source.weight > 0:
                raise DataConfigError(f"data.sources[{i}].weight={source.weight}: must be > 0")
        if self.decode not in DECODE_MODES:
            raise DataConfigError(f"data.decode={self.decode!r}: allowed values are {', '.join(DECODE_MODES)}")
        if self.shuffle_window < 1:
            raise DataConfigError(f"data.shuffle_window={self.shuffle_window}: must be >= 1 (1 = no sample shuffle)")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise DataConfigError(f"data.crop_scale={list(self.crop_scale)}: give [min, max] with 0 < min <= max <= 1")
        if self.captions_per_sample < 1:
            raise DataConfigError(f"data.captions_per_sample={self.captions_per_sample}: must be >= 1")
        if self.hard_negatives < 0:
            raise DataConfigError(f"data.hard_negatives={self.hard_negatives}: must be >= 0 (0 = off)")
        if self.workers < 0:
            raise DataConfigError(f"data.workers={self.workers}: must be >= 0")
        if self.caption_weights is not None:
            check_caption_weights(self.caption_weights)


# KEY.neg.txt: the hard negatives' member (convert --neg-caption-col); here, not in shards.py, to keep this torch-free
# module's imports light (launch validates configs on login nodes); shards.py re-exports it.
HARD_NEGATIVES = "neg.txt"
# What convert writes: "txt" (KEY.txt) or a sanitised column name + ".txt" (data_pipeline/shards.caption_source_name).
CAPTION_SOURCE_NAME = re.compile(r"txt|[a-z0-9]([a-z0-9_-]*[a-z0-9])?\.txt")


def check_caption_weights(weights: Dict[str, float]) -> None:
    """Names that convert can write, weights > 0: caught before any process starts."""
    if not weights:
        raise DataConfigError("data.caption_weights is empty: give {txt: 1.0, NAME.txt: w, ...} or null (KEY.txt only)")
    for name, weight in weights.items():
        if name == HARD_NEGATIVES:
            raise DataConfigError(f"data.caption_weights: {name!r} holds the hard negatives (captions that do not match "
                                  "the image), never positives; drop it (they are read by data.hard_negatives)")
        if not CAPTION_SOURCE_NAME.fullmatch(str(name)):
            raise DataConfigError(f"data.caption_weights: {name!r} is not a caption source name; give member "
                                  "extensions: txt (KEY.txt, the primary) or NAME.txt (KEY.NAME.txt, written by "
                                  "convert --caption-col NAME; the manifest's caption_sources lists them)")
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
            raise DataConfigError(f"data.caption_weights[{name!r}]={weight!r}: must be a number > 0")
