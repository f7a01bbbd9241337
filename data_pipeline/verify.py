"""`clipforge verify DIR`: re-read every shard of a shard dataset and check it against manifest.json.

Checks: each shard's bytes and sha256; samples per shard against the manifest, sizes.json and the shard parquet;
every sample has an image, a non-empty UTF-8 caption file and a json; keys have no dots and are unique across the
dataset; every image decodes; the manifest's counts add up to its input items. Exit 0 when clean, 1 otherwise,
2 when DIR is not a shard dataset. Every problem names the shard (and key).
"""
import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
from collections import defaultdict

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


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
    images = [ext for ext in members if ext in IMAGE_EXTENSIONS]
    if len(images) != 1:
        problems.append(f"{where}: expected one image member, found {images or 'none'}")
    else:
        try:
            _decode(members[images[0]], images[0])
        except Exception as error:
            problems.append(f"{where}: image does not decode ({type(error).__name__}: {error})")
    try:
        lines = members["txt"].decode("utf-8").split("\n") if "txt" in members else None
        if lines is None:
            problems.append(f"{where}: no .txt caption member")
        elif not all(line.strip() for line in lines):
            problems.append(f"{where}: empty caption line in {key}.txt")
    except UnicodeDecodeError as error:
        problems.append(f"{where}: caption is not UTF-8 ({error})")
    if "json" not in members:
        problems.append(f"{where}: no .json member")
        return
    try:
        json.loads(members["json"])
    except ValueError as error:
        problems.append(f"{where}: .json does not parse ({error})")


def check_shard(root: str, entry: dict, seen: dict, problems: list) -> int:
    name, path = entry["name"], os.path.join(root, entry["name"])
    if not os.path.isfile(path):
        problems.append(f"{name}: missing (listed in manifest.json)")
        return 0
    with open(path, "rb") as handle:
        data = handle.read()
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        problems.append(f"{name}: {len(data)} bytes / sha256 differ from the manifest ({entry['bytes']} bytes): "
                        "the file changed after conversion")
    samples, last = defaultdict(dict), None
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
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
    parquet = os.path.join(root, name[:-len(".tar")] + ".parquet")
    if os.path.isfile(parquet):
        import pyarrow.parquet as pq
        statuses = pq.read_table(parquet, columns=["status"]).column("status").to_pylist()
        if statuses.count("success") != len(samples):
            problems.append(f"{name}: parquet lists {statuses.count('success')} successes, tar has {len(samples)}")
    return len(samples)


def verify(root: str, progress: bool = True) -> tuple:
    """-> (manifest, samples read, problems). Raises FileNotFoundError/ValueError when DIR has no valid manifest."""
    with open(os.path.join(root, "manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    if manifest.get("format") != "clipforge-shards":
        raise ValueError(f"{root}/manifest.json: format is {manifest.get('format')!r}, not 'clipforge-shards'")
    problems, seen, total = [], {}, 0
    from tqdm import tqdm
    for entry in tqdm(manifest["shards"], unit="shard", desc="verify", disable=not progress, file=sys.stderr):
        total += check_shard(root, entry, seen, problems)
    if total != manifest["num_samples"]:
        problems.append(f"manifest.json: num_samples {manifest['num_samples']} but the shards hold {total}")
    if "input_items" in manifest and sum(manifest["counts"].values()) != manifest["input_items"]:
        problems.append(f"manifest.json: counts add up to {sum(manifest['counts'].values())}, "
                        f"input_items is {manifest['input_items']}")
    sizes_path = os.path.join(root, "sizes.json")
    if os.path.isfile(sizes_path):
        with open(sizes_path, encoding="utf-8") as handle:
            sizes = json.load(handle)
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
    parser.add_argument("dir", help="shard dataset folder (with manifest.json)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    try:
        manifest, total, problems = verify(args.dir, args.progress)
    except (OSError, ValueError, KeyError) as error:
        print(f"clipforge verify: error: {args.dir} is not a readable shard dataset: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"PROBLEM {problem}")
    print(f"clipforge verify: {len(manifest['shards'])} shards, {total} samples, {len(problems)} problem(s)"
          + ("" if problems else ": OK"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
