"""`clipforge verify DIR`: re-read every shard of a shard dataset and check it against manifest.json.

Checks: each shard's bytes and sha256; samples per shard against the manifest, sizes.json and the shard parquet;
every sample has an image, a non-empty UTF-8 caption file (further caption sources' too) and a json; keys have
no dots and are unique across the dataset; every image decodes; the manifest's counts add up to its input items.
Exit 0 when clean, 1 otherwise, 2 when DIR is not a shard dataset. Every problem names the shard (and key).
DIR may be an fsspec URL (s3://bucket/ds, https://host/ds): its files are read through data_pipeline.remote,
retried; a shard that stays unreadable is a problem naming the byte where reading stopped.
"""
import argparse
import hashlib
import io
import json
import sys
import tarfile
from collections import defaultdict

from clipforge.errors import UserError
from clipforge.data_pipeline import remote
from clipforge.data_pipeline.shards import IMAGE_EXTS, shard_parquet_name, split_member_name

SHARD_FIELDS = ("name", "bytes", "sha256", "samples")


class NotAShardDataset(UserError, ValueError):
    """DIR has no well-formed manifest.json, or a file verify must read cannot be read (exit 2)."""


def _read_json(path: str):
    try:
        return json.loads(remote.read_bytes(path))
    except (OSError, ValueError) as error:  # missing, unreadable, not UTF-8, not JSON
        raise NotAShardDataset(str(error)) from None


def load_manifest(root: str) -> dict:
    """manifest.json with every field verify reads; NotAShardDataset (naming the field) otherwise."""
    manifest = _read_json(remote.join(root, "manifest.json"))
    if not isinstance(manifest, dict):
        raise NotAShardDataset(f"{root}/manifest.json: expected a JSON object")
    if manifest.get("format") != "clipforge-shards":
        raise NotAShardDataset(f"{root}/manifest.json: format is {manifest.get('format')!r}, not 'clipforge-shards'")
    for field in ("shards", "num_samples") + (("counts",) if "input_items" in manifest else ()):
        if field not in manifest:
            raise NotAShardDataset(f"{root}/manifest.json: no {field!r} field")
    entries = manifest["shards"]
    well_formed = isinstance(entries, list) and all(isinstance(entry, dict) and set(SHARD_FIELDS) <= set(entry)
                                                    for entry in entries)
    if not well_formed:
        raise NotAShardDataset(f"{root}/manifest.json: 'shards' must be a list of {{{', '.join(SHARD_FIELDS)}}}")
    return manifest


def _decode(data: bytes, extension: str) -> None:
    if extension in ("jpg", "jpeg"):
        import simplejpeg
        simplejpeg.decode_jpeg(data, strict=True)
        return
    from PIL import Image
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def check_sample(shard: str, key: str, members: dict, problems: list) -> None:
    where = f"{shard}: key {key}"
    images = [ext for ext in members if ext in IMAGE_EXTS]
    if len(images) != 1:
        problems.append(f"{where}: expected one image member, found {images or 'none'}")
    else:
        try:
            _decode(members[images[0]], images[0])
        except Exception as error:
            problems.append(f"{where}: image does not decode ({type(error).__name__}: {error})")
    if "txt" not in members:
        problems.append(f"{where}: no .txt caption member")
    # the primary KEY.txt and every further caption source KEY.NAME.txt (data_pipeline/shards.py)
    for extension in sorted(ext for ext in members if ext.endswith("txt")):
        try:
            if not all(line.strip() for line in members[extension].decode("utf-8").split("\n")):
                problems.append(f"{where}: empty caption line in {key}.{extension}")
        except UnicodeDecodeError as error:
            problems.append(f"{where}: caption in {key}.{extension} is not UTF-8 ({error})")
    if "json" not in members:
        problems.append(f"{where}: no .json member")
        return
    try:
        json.loads(members["json"])
    except ValueError as error:
        problems.append(f"{where}: .json does not parse ({error})")


def _parquet_statuses(path: str) -> list:
    import pyarrow.parquet as pq
    try:
        source = io.BytesIO(remote.read_bytes(path)) if remote.is_url(path) else path
        return pq.read_table(source, columns=["status"]).column("status").to_pylist()
    except (OSError, ValueError) as error:  # pyarrow's errors derive from these: a damaged or foreign file
        raise NotAShardDataset(f"{path}: {error}") from None


def check_shard(root: str, entry: dict, seen: dict, problems: list) -> int:
    name, path = entry["name"], remote.join(root, entry["name"])
    if not remote.isfile(path):
        problems.append(f"{name}: missing (listed in manifest.json)")
        return 0
    try:
        with remote.open_sequential(path) as handle:  # a URL in ranged blocks, each retried and resumed
            data = handle.read()
    except remote.RemoteReadError as error:  # retried already: this shard is not verified, the others still are
        problems.append(f"{name}: {error}")
        return 0
    except OSError as error:
        raise NotAShardDataset(str(error)) from None
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        problems.append(f"{name}: {len(data)} bytes / sha256 differ from the manifest ({entry['bytes']} bytes): "
                        "the file changed after conversion")
    samples, last = defaultdict(dict), None
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                key, extension = split_member_name(member.name)
                if key != last and key in samples:
                    problems.append(f"{name}: key {key}: members are not adjacent")
                last = key
                samples[key][extension] = tar.extractfile(member).read() if member.isfile() else b""
    except tarfile.TarError as error:
        problems.append(f"{name}: not a readable tar ({error})")
    for key, members in samples.items():
        if key in seen:
            problems.append(f"{name}: key {key}: duplicate key (also in {seen[key]})")
        seen[key] = name
        check_sample(name, key, members, problems)
    if len(samples) != entry["samples"]:
        problems.append(f"{name}: {len(samples)} samples, manifest says {entry['samples']}")
    parquet = remote.join(root, shard_parquet_name(name))
    if remote.isfile(parquet):
        statuses = _parquet_statuses(parquet)
        if statuses.count("success") != len(samples):
            problems.append(f"{name}: parquet lists {statuses.count('success')} successes, tar has {len(samples)}")
    return len(samples)


def verify(root: str, progress: bool = True) -> tuple:
    """-> (manifest, samples read, problems). Raises NotAShardDataset when DIR has no valid manifest."""
    manifest = load_manifest(root)
    problems, seen, total = [], {}, 0
    from tqdm import tqdm
    for entry in tqdm(manifest["shards"], unit="shard", desc="verify", disable=not progress, file=sys.stderr):
        total += check_shard(root, entry, seen, problems)
    if total != manifest["num_samples"]:
        problems.append(f"manifest.json: num_samples {manifest['num_samples']} but the shards hold {total}")
    if "input_items" in manifest and sum(manifest["counts"].values()) != manifest["input_items"]:
        problems.append(f"manifest.json: counts add up to {sum(manifest['counts'].values())}, "
                        f"input_items is {manifest['input_items']}")
    sizes_path = remote.join(root, "sizes.json")
    if remote.isfile(sizes_path):
        sizes = _read_json(sizes_path)
        expected = {entry["name"]: entry["samples"] for entry in manifest["shards"]}
        if sizes != expected:
            problems.append("sizes.json: differs from manifest.json's shard sample counts")
    else:
        problems.append("sizes.json: missing (open_clip needs it)")
    return manifest, total, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="clipforge verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example:\n  clipforge verify shards/")
    parser.add_argument("dir", help="shard dataset folder (with manifest.json), or its fsspec URL (s3://...)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    try:
        manifest, total, problems = verify(args.dir, args.progress)
    except UserError as error:  # anything else is a bug: its traceback, exit 1
        print(f"clipforge verify: error: {args.dir} is not a readable shard dataset: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"PROBLEM {problem}")
    print(f"clipforge verify: {len(manifest['shards'])} shards, {total} samples, {len(problems)} problem(s)"
          + ("" if problems else ": OK"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
