"""Checkpoint integrity: sha256 checksums of every file of a checkpoint, and the newest intact one.

    RUN/checkpoints/step00000120/checksums.json   {"algorithm": "sha256", "files": {"rng/rank0.json":
                                                   {"bytes": n, "sha256": hex}, ...}}

Rank 0 writes it in CheckpointManager.save after every rank's files exist and before the folder is renamed
into place (the commit), so a complete checkpoint always has one. At resume a checkpoint is checked size
first (a truncated file is named without reading it), then sha256; a bad latest is passed over for the
newest older one that passes, with a warning naming the bad file. Checkpoints written before checksums
existed (no checksums.json) are trusted as they are.
"""
import hashlib
import json
import os
import time
from typing import Dict, List, Optional, Tuple

from clipforge.atomic import write_atomic

CHECKSUMS = "checksums.json"
_CHUNK = 1 << 22  # 4 MiB reads: hashlib's throughput, without holding a file in memory


def _files(folder: str) -> List[str]:
    """Every file under folder (relative, sorted), checksums.json itself left out."""
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, n), folder) for n in names]
    return sorted(f for f in found if f != CHECKSUMS)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: str) -> Dict[str, dict]:
    files = {rel: {"bytes": os.path.getsize(os.path.join(folder, rel)), "sha256": sha256_of(os.path.join(folder, rel))}
             for rel in _files(folder)}
    write_atomic(os.path.join(folder, CHECKSUMS), json.dumps({"algorithm": "sha256", "files": files}, indent=1))
    return files


def _recorded(folder: str) -> Optional[Dict[str, dict]]:
    """The recorded files; None when the checkpoint predates checksums; raises ValueError when unreadable."""
    path = os.path.join(folder, CHECKSUMS)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)["files"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: unreadable ({err})") from None


def problem(folder: str) -> Optional[str]:
    """None when the checkpoint at folder is intact, else one line naming the bad file and what is wrong."""
    if not os.path.isfile(os.path.join(folder, "trainer_state.json")):
        return f"{os.path.join(folder, 'trainer_state.json')}: missing (an incomplete checkpoint)"
    try:
        files = _recorded(folder)
    except ValueError as err:
        return str(err)
    for rel, want in (files or {}).items():
        path = os.path.join(folder, rel)
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size is None:
            return f"{path}: missing"
        if size != want["bytes"]:
            return f"{path}: {size} bytes, {want['bytes']} written (truncated or overwritten)"
    for rel, want in (files or {}).items():  # sizes first: a truncated file is named without hashing the rest
        if sha256_of(os.path.join(folder, rel)) != want["sha256"]:
            return f"{os.path.join(folder, rel)}: fails its sha256 checksum (corrupted)"
    return None


def _candidates(checkpoints_dir: str, latest_tag: Optional[str]) -> List[str]:
    """latest's tag first, then every older complete-looking tag, newest first."""
    tags = sorted((t for t in os.listdir(checkpoints_dir) if t.startswith("step")
                   and os.path.isdir(os.path.join(checkpoints_dir, t))), reverse=True)
    if latest_tag is None:
        return []
    return [latest_tag] + [t for t in tags if t < latest_tag]


def newest_intact(checkpoints_dir: str, latest_tag: Optional[str]) -> Tuple[Optional[str], List[str], str]:
    """-> (path of the newest intact checkpoint or None, one warning per checkpoint passed over, what verifying
    the intact one cost: "N files, X MB in S s (R MB/s)")."""
    warnings = []
    for tag in _candidates(checkpoints_dir, latest_tag) if os.path.isdir(checkpoints_dir) else []:
        folder, t0 = os.path.join(checkpoints_dir, tag), time.perf_counter()
        bad = problem(folder) if os.path.isdir(folder) else f"{folder}: missing"
        if bad is None:
            files = _recorded(folder) or {}
            total, seconds = sum(f["bytes"] for f in files.values()), time.perf_counter() - t0
            return folder, warnings, (f"{len(files)} files, {total / 1e6:.1f} MB in {seconds:.2f} s "
                                      f"({total / 1e6 / max(seconds, 1e-9):.0f} MB/s)")
        warnings.append(f"checkpoint {tag} passed over: {bad}")
    return None, warnings, ""
