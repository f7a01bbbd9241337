"""Open a shard dataset (DESIGN.md "Shard dataset") and read its samples.

    ds = open_shards("out/")                       # dir with manifest.json (else sizes.json)
    ds = open_shards("out/shard-{000000..000009}.tar")  # brace pattern; one .tar works too
    ds.shards            # [Shard(path, name, samples)], in the dataset's order
    ds.num_samples       # sum of per-shard counts
    for s in ds.iter_samples(shards=[0, 3]):   # {key, image_bytes, image_ext, captions, meta, shard}
        ...

Caption sources: KEY.txt is the primary source (the captions eval reads). A sample may carry more, one
member each, KEY.NAME.txt (e.g. KEY.synthetic.txt recaptions), written by `clipforge convert --caption-col
primary --caption-col NAME`; the source is called by its member extension ("txt", "synthetic.txt") and the
manifest lists the dataset's in "caption_sources". The train loader picks one per visit by
data.caption_weights (data_pipeline/stream/caption_sources.py).

Hard negatives (NegCLIP): KEY.neg.txt, one caption per line that does NOT describe the image, written by
`clipforge convert --neg-caption-col COL`; never a caption source (the manifest names it apart, in
"hard_negatives"). The train loader reads it for data.hard_negatives (data_pipeline/stream/hard_negatives.py).

Every path is checked when the dataset is opened, before any work: a missing or unreadable
shard raises ShardError naming it. Samples are read by scanning tar headers (no index file is
required from the converter); `index_tar` gives the byte offsets of every member, which the
streaming loader uses for random access. Member names are only ever dictionary keys, never
file-system paths.
"""
import json
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from braceexpand import braceexpand

from clipforge.data_pipeline import remote
from clipforge.data_pipeline.config import HARD_NEGATIVES  # noqa: F401  (KEY.neg.txt; re-exported for readers)
from clipforge.errors import UserError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
PRIMARY_CAPTIONS = "txt"  # KEY.txt: the caption source eval and every reader without caption weights use


class ShardError(UserError, ValueError):
    """A shard dataset path is missing, unreadable or inconsistent; the message names it."""


def shard_name(index: int) -> str:
    """The converter's name of shard `index`, without extension: shard-000000 (.tar, .parquet, _stats.json)."""
    return f"shard-{index:06d}"


def caption_source_name(column: str) -> str:
    """A caption column -> its member extension: "Synthetic Caption" -> "synthetic_caption.txt" (lower case,
    runs of anything but a-z, 0-9, -, _ made one "_": no dots, so the key/extension split stays unambiguous);
    "" when nothing is left."""
    stem = re.sub(r"[^a-z0-9_-]+", "_", column.lower()).strip("_-")
    return f"{stem}.{PRIMARY_CAPTIONS}" if stem else ""


def caption_sources(manifest: Optional[dict]) -> List[str]:
    """The caption sources a manifest lists (primary first); ["txt"] for manifests from before the field."""
    listed = (manifest or {}).get("caption_sources")
    return [str(name) for name in listed] if isinstance(listed, list) else [PRIMARY_CAPTIONS]


def shard_parquet_name(tar_name: str) -> str:
    """The parquet of a shard sits beside its tar: shard-000000.tar -> shard-000000.parquet."""
    return tar_name[:-len(".tar")] + ".parquet"


@dataclass(frozen=True)
class Shard:
    path: str
    name: str
    samples: int  # from manifest.json / sizes.json, else counted from the tar headers


@dataclass
class SampleIndex:
    """Where one sample's members lie in its tar: ext -> (data offset, size) in bytes."""
    key: str
    members: Dict[str, Tuple[int, int]]


@dataclass
class TarIndex:
    samples: List[SampleIndex]
    # True when the tar ends mid-member or mid-header: the last, partial sample was dropped.
    truncated: bool
    # Set when a remote header read failed after its retries: only the samples before its byte are listed.
    read_error: Optional[remote.RemoteReadError] = None


def split_member_name(name: str) -> Tuple[str, str]:
    """A tar member name -> (sample key, extension), webdataset's convention: key = path up to the first dot
    of the basename, ext = the rest. The loader, eval and verify all group members by it."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def index_tar(path: str) -> TarIndex:
    """Scan the tar headers (seeks past data; ~3 header reads per sample) and group members by key.

    Adjacent members with the same key form one sample. A tar cut short (killed copy, partial
    download) keeps every complete sample before the cut and reports truncated=True. A URL is read
    through data_pipeline.remote (retried ranged reads); a read that still fails sets read_error.
    """
    size = remote.size(path)
    samples: List[SampleIndex] = []
    truncated, read_error = False, None
    partial_key = None  # key of the sample whose member was cut; None = unknown, drop the last group
    try:
        with remote.open_sequential(path) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            while True:
                try:
                    info = tf.next()
                except (tarfile.ReadError, EOFError):
                    truncated = True
                    break
                if info is None:
                    # A complete tar ends with two zero blocks; a copy cut at a member boundary does not.
                    truncated = size - tf.offset < 2 * tarfile.BLOCKSIZE
                    break
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                if info.offset_data + info.size > size:
                    truncated, partial_key = True, key
                    break
                if not samples or samples[-1].key != key:
                    samples.append(SampleIndex(key, {}))
                samples[-1].members[ext] = (info.offset_data, info.size)
                tf.members.clear()  # tarfile keeps every TarInfo otherwise: O(members) memory per scan
    except tarfile.ReadError as e:  # not a tar at all (the first header is bad)
        raise ShardError(f"{path}: not a readable tar file ({e})") from None
    except remote.RemoteReadError as e:  # the samples indexed before it stay usable
        read_error = e
    if (truncated or read_error) and samples and partial_key in (None, samples[-1].key):
        samples.pop()  # some of its members may be the ones that were cut off
    return TarIndex(samples, truncated, read_error)


def read_member(f, span: Tuple[int, int]) -> bytes:
    offset, size = span
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise EOFError(f"member at offset {offset} cut short ({len(data)} of {size} bytes)")
    return data


def sample_meta(raw: bytes) -> dict:
    """KEY.json's bytes -> dict ({} when unreadable: the caller decides whether a sample needs it)."""
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def all_captions(meta: dict, txt_captions: List[str]) -> List[str]:
    """KEY.json's "captions" when it lists more than KEY.txt holds: shards converted with --one-caption-per-txt
    keep one caption in KEY.txt (open_clip's trainer joins its lines) and every caption in KEY.json."""
    listed = meta.get("captions")
    if not isinstance(listed, list) or len(listed) <= len(txt_captions):
        return txt_captions
    return [str(c).strip() for c in listed if str(c).strip()] or txt_captions


def txt_holds_first_caption(shard_set: "ShardSet") -> bool:
    """The manifest says KEY.txt holds one caption of several (convert --one-caption-per-txt)."""
    return (shard_set.manifest or {}).get("txt_captions") == "first"


def decode_sample(f, entry: SampleIndex) -> dict:
    """Read one indexed sample: image bytes, captions (KEY.txt lines; see all_captions), KEY.json as a dict.

    Missing members come back empty (image_bytes None, captions [], meta {}); the caller
    decides whether that is an error (the train loader counts it, eval reports it).
    """
    image_ext = next((e for e in IMAGE_EXTS if e in entry.members), None)
    image_bytes = read_member(f, entry.members[image_ext]) if image_ext else None
    captions: List[str] = []
    if "txt" in entry.members:
        text = read_member(f, entry.members["txt"]).decode("utf-8", errors="replace")
        captions = [line.strip() for line in text.splitlines() if line.strip()]
    meta: dict = {}
    if "json" in entry.members:
        meta = sample_meta(read_member(f, entry.members["json"]))
        captions = all_captions(meta, captions)
    return {"key": entry.key, "image_bytes": image_bytes, "image_ext": image_ext, "captions": captions, "meta": meta}


@dataclass
class ShardSet:
    spec: str
    shards: List[Shard]
    manifest: Optional[dict] = None  # the parsed manifest.json when there is one

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def iter_samples(self, shards: Optional[Sequence[int]] = None) -> Iterator[dict]:
        """Yield every sample in file order, optionally of a subset of shards (indices into .shards)."""
        chosen = range(len(self.shards)) if shards is None else shards
        for i in chosen:
            shard = self.shards[i]
            index = index_tar(shard.path)
            if index.read_error:
                raise ShardError(f"{index.read_error}; the shard's samples from there on cannot be read")
            with remote.open_sequential(shard.path) as f:
                for entry in index.samples:
                    sample = decode_sample(f, entry)
                    sample["shard"] = shard.name
                    yield sample


def _read_json(path: str) -> dict:
    try:
        data = json.loads(remote.read_bytes(path))
    except OSError as e:
        raise ShardError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise ShardError(f"{path}: not valid JSON ({e}); re-run `clipforge convert` or fix the file") from None
    if not isinstance(data, dict):
        raise ShardError(f"{path}: expected a JSON object")
    return data


def _sizes_from_dir(root: str) -> Tuple[Dict[str, int], Optional[dict]]:
    """Shard name -> sample count, from manifest.json (preferred) or sizes.json; ({}, None) if neither."""
    manifest_path = remote.join(root, "manifest.json")
    if remote.isfile(manifest_path):
        manifest = _read_json(manifest_path)
        try:
            sizes = {str(s["name"]): int(s["samples"]) for s in manifest["shards"]}
        except (KeyError, TypeError, ValueError):
            raise ShardError(f"{manifest_path}: 'shards' must be a list of {{name, samples, ...}}") from None
        return sizes, manifest
    sizes_path = remote.join(root, "sizes.json")
    if remote.isfile(sizes_path):
        try:
            return {str(k): int(v) for k, v in _read_json(sizes_path).items()}, None
        except (TypeError, ValueError):
            raise ShardError(f"{sizes_path}: expected {{\"shard-000000.tar\": count, ...}}") from None
    return {}, None


def _check_readable(paths: List[str]) -> None:
    """Raise one error naming every missing shard (the first 5 of them), or the first unreadable one."""
    try:
        missing = [p for p in paths if not remote.isfile(p)]
    except remote.RemoteReadError as e:  # not "missing": the store did not answer
        raise ShardError(f"{e}; check the connection or the store, then start again") from None
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ShardError(f"{len(missing)} of {len(paths)} shards not found: {', '.join(missing[:5])}{more}")
    for path in (p for p in paths if not remote.is_url(p)):  # a URL's isfile above asked the server already
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise ShardError(f"shard not readable: {path} ({e.strerror})") from None


def open_shards(spec: str) -> ShardSet:
    """Resolve a dataset dir, a .tar or a brace pattern (or the URL of any of them, or of a manifest:
    data_pipeline.remote) into shards with sample counts.

    Counts come from the dataset's manifest.json / sizes.json (a dir's, or the one next to the
    tars); a tar that neither lists is counted by scanning its headers.
    """
    spec = os.fspath(spec)
    root = remote.listed_root(spec)
    if root is not None:
        sizes, manifest = _sizes_from_dir(root)
        if not sizes:
            raise ShardError(f"{spec}: no manifest.json or sizes.json; is this a `clipforge convert` output dir?")
        paths = [remote.join(root, name) for name in sizes]
    elif not remote.is_url(spec) and not os.path.exists(spec) and "{" not in spec and not spec.endswith(".tar"):
        raise ShardError(f"dataset not found: {spec} (give a `clipforge convert` output dir, a .tar or a brace pattern)")
    else:
        paths = list(braceexpand(spec))
        if not paths:
            raise ShardError(f"{spec}: the pattern expands to no paths")
        sizes, manifest = _sizes_from_dir(remote.dirname(paths[0]))
    _check_readable(paths)
    shards = []
    for path in paths:
        name = os.path.basename(path)
        count = sizes[name] if name in sizes else len(index_tar(path).samples)
        shards.append(Shard(path, name, count))
    if not shards:
        raise ShardError(f"{spec}: the dataset lists no shards")
    return ShardSet(spec, shards, manifest)


def iter_samples(spec: str, shards: Optional[Sequence[int]] = None) -> Iterator[dict]:
    """Shorthand for open_shards(spec).iter_samples(shards)."""
    return open_shards(spec).iter_samples(shards)
