"""The input side of curation: every sample of a shard dataset with all its members' bytes, in file order.

Kept samples are copied member for member, so the output holds the input's bytes unchanged (KEY.json's extra
columns and any member besides image/txt/json included).
"""
import hashlib
import io
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from clipforge.data_pipeline import remote
from clipforge.data_pipeline.shards import IMAGE_EXTS, ShardSet, all_captions, index_tar, read_member, sample_meta
from .options import CurateError


@dataclass
class Sample:
    key: str
    shard: str                     # the input shard's name
    members: Dict[str, bytes]      # extension -> bytes, in tar order
    captions: List[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def image_bytes(self) -> Optional[bytes]:
        return next((self.members[ext] for ext in IMAGE_EXTS if ext in self.members), None)

    @property
    def source(self) -> str:
        return str(self.meta.get("source") or self.meta.get("url") or "")


def _sample(key: str, shard: str, members: Dict[str, bytes]) -> Sample:
    lines = members.get("txt", b"").decode("utf-8", errors="replace").splitlines()
    meta = sample_meta(members["json"]) if "json" in members else {}
    captions = all_captions(meta, [line.strip() for line in lines if line.strip()])
    return Sample(key, shard, members, captions, meta)


def _indexed(shard_set: ShardSet):
    for shard in shard_set.shards:
        index = index_tar(shard.path)
        if index.truncated:
            raise CurateError(f"{shard.path}: the tar is cut short; run `clipforge verify` on the dataset and "
                              "re-create or drop that shard")
        if index.read_error:
            raise CurateError(f"{index.read_error}; the shard cannot be read in full, try again later")
        yield shard, index


def input_keys(shard_set: ShardSet) -> List[str]:
    """Every sample key in file order (tar headers only); refuses a dataset whose keys repeat, since scores and
    embeddings are matched by key."""
    keys = [entry.key for _, index in _indexed(shard_set) for entry in index.samples]
    seen = set()
    for key in keys:
        if key in seen:
            raise CurateError(f"{shard_set.spec}: key {key} appears twice; run `clipforge verify` on the dataset")
        seen.add(key)
    return keys


def read_samples(shard_set: ShardSet) -> Iterator[Sample]:
    for shard, index in _indexed(shard_set):
        with remote.open_sequential(shard.path) as handle:
            for entry in index.samples:
                members = {ext: read_member(handle, span) for ext, span in entry.members.items()}
                yield _sample(entry.key, shard.name, members)


def _recorded_size(meta: dict, width: str, height: str) -> Optional[Tuple[int, int]]:
    values = meta.get(width), meta.get(height)
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        return values
    return None


def image_size(sample: Sample) -> Tuple[int, int]:
    """(width, height) of the original image when KEY.json records it (convert does), else of the stored image
    (read from its header). Raises ValueError when there is no readable image."""
    recorded = _recorded_size(sample.meta, "original_width", "original_height")
    if recorded:
        return recorded
    if sample.image_bytes is None:
        raise ValueError("no image member")
    from PIL import Image
    with Image.open(io.BytesIO(sample.image_bytes)) as image:
        return image.size


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
