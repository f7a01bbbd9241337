"""Storage faults for the checkpoint tests: a damaged file, and a torch.save that fills the disk part-way."""
import errno
import io
import os

import torch.distributed as dist


def damage(path: str, how: str) -> None:
    """how: "flip" (one byte in the middle, size unchanged) or "truncate" (to half)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if how == "truncate":
            f.truncate(size // 2)
            return
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))


def failing_save(real_save, k: int, rank: int = None):
    """torch.save whose k-th write into a checkpoint being written (a .tmp- folder) writes half its bytes and
    raises OSError ENOSPC; rank: on that rank only (None: every rank)."""
    calls = {"n": 0}

    def save(obj, path, *args, **kwargs):
        if ".tmp-step" in str(path) and (rank is None or dist.get_rank() == rank):
            calls["n"] += 1
            if calls["n"] == k:
                buffer = io.BytesIO()
                real_save(obj, buffer)
                with open(path, "wb") as f:
                    f.write(buffer.getvalue()[:buffer.tell() // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(obj, path, *args, **kwargs)
    return save
