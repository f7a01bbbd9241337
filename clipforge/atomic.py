"""Atomic file writes, the one implementation: a reader (another rank, a resumed run, open_clip) sees the old
file or the complete new one, never half of one, also after a crash or power loss (the data is fsync'ed
before the rename, the rename is fsync'ed in its folder).

    write_atomic(path, text_or_bytes)          # a whole file from memory
    with atomic_path(path) as tmp:             # for writers that take a path (torch.save, np.savez, save_file)
        torch.save(state, tmp)
    fsync_tree(folder)                         # a folder others filled, before it is renamed into place
    fsync_folder(parent)                       # and its parent, after the rename

The temporary is `.NAME.PID.tmp` beside the target: same file system (the rename is atomic), and the
leading dot keeps it out of `shard-*.tar` globs and brace patterns.
"""
import contextlib
import glob
import os
from typing import Iterator, List, Union


def temporary_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}.tmp")


def leftover_temporaries(path: str) -> List[str]:
    """The temporaries of `path` that killed writers (of any process id) left behind."""
    folder, name = os.path.split(path)
    return glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp"))


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        if not directory:
            raise
    finally:
        os.close(fd)


def fsync_folder(path: str) -> None:
    """A rename into `path` (a folder) made durable."""
    _fsync_path(path, directory=True)


def fsync_tree(folder: str) -> None:
    """Every file under `folder` and every folder in it fsync'ed: what atomic_path does for one file, for a folder
    that other writers filled (DeepSpeed's checkpoint files) before it is renamed into place."""
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_path(os.path.join(root, name))
        fsync_folder(root)


@contextlib.contextmanager
def atomic_path(path: str, mode: int = None) -> Iterator[str]:
    """Yields a temporary path to write; on success it is fsync'ed (chmod'ed to `mode` if given) and renamed
    to `path`; on an exception it is removed and `path` is left as it was."""
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync_path(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_path(os.path.dirname(os.path.abspath(path)), directory=True)


def write_atomic(path: str, data: Union[str, bytes], mode: int = None) -> None:
    """The whole file at once: str as UTF-8 text, bytes as they are."""
    with atomic_path(path, mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
