"""Shard datasets behind fsspec URLs (s3://, gs://, http(s)://, hf://, any protocol fsspec knows), read
with ranged requests that survive a flaky network.

    is_url("s3://bucket/ds")            # True; plain paths stay on the local file system
    f = open_shard("https://host/ds/shard-000000.tar")   # .pread(size, offset): one ranged request
    f = RemoteFile(url)                 # also .seek/.read for sequential readers (tarfile, eval)

A failed request is retried with exponential backoff and the read resumes at the first byte it does not
hold yet (the bytes of earlier, completed requests are kept), never from the start of the shard and never
silently short: after the last try it raises RemoteReadError naming the URL and that byte offset, which
the readers count as skipped (webdataset drops the rest of a shard on such an error: #112, #432).
Granularity: a request that breaks off returns nothing through fsspec, so the resume point is the start
of that request (one member for the loader, at most one BLOCK for sequential readers).

Credentials and endpoints come from fsspec's own configuration only (its environment variables such as
FSSPEC_S3_ENDPOINT_URL, ~/.config/fsspec, and each backend's usual sources: AWS_* variables, ~/.aws,
gcloud); clipforge's config files never hold any. Tries and first wait: CLIPFORGE_READ_TRIES (6),
CLIPFORGE_READ_BACKOFF_S (0.5; doubled per try, at most 30 s).
"""
import asyncio
import os
import posixpath
import time
from collections import OrderedDict
from typing import Optional, Tuple

from clipforge.errors import UserError

BLOCK = 4 << 20  # sequential reads fetch 4 MiB at a time: few requests per shard, bounded memory
MAX_WAIT_S = 30.0


class RemoteReadError(OSError):
    """A ranged read still failed after every retry; names the URL and the first byte not read."""

    def __init__(self, url: str, offset: int, tries: int, cause: BaseException):
        super().__init__(f"{url}: read failed at byte {offset} after {tries} tries ({type(cause).__name__}: {cause})")
        self.url, self.offset = url, offset


class RangeNotSupported(UserError, ValueError):
    """The server answered a ranged request with more bytes than asked: it ignores HTTP Range. Not an OSError,
    so no reader counts it as one bad sample: every read of such a server would fail the same way."""


def is_url(path: str) -> bool:
    return "://" in str(path)


def join(root: str, name: str) -> str:
    return posixpath.join(root, name) if is_url(root) else os.path.join(root, name)


def dirname(path: str) -> str:
    """The folder of a path or URL ("." for a bare file name)."""
    if is_url(path):
        return path.rsplit("/", 1)[0]
    return os.path.dirname(path) or "."


def listed_root(spec: str) -> Optional[str]:
    """The folder whose manifest.json / sizes.json lists the dataset `spec` names: a local dir; a URL of a
    dataset folder or of its manifest.json / sizes.json. None for tars and brace patterns."""
    if not is_url(spec):
        return spec if os.path.isdir(spec) else None
    if spec.endswith(".json"):
        return dirname(spec)
    return None if "{" in spec or spec.endswith(".tar") else spec.rstrip("/")


def _fs(url: str):
    import fsspec  # only URL paths need it; local datasets never import it
    return fsspec.core.url_to_fs(url)


def _retryable() -> tuple:
    """What a network read raises when another try may work (not: missing, forbidden, a bad URL)."""
    errors = [OSError, TimeoutError, asyncio.TimeoutError]
    try:
        import aiohttp  # fsspec's HTTP backend and s3fs; absent without the `remote` extra
        errors.append(aiohttp.ClientError)
    except ImportError:
        pass
    return tuple(errors)


def _tries() -> Tuple[int, float]:
    return max(1, int(os.environ.get("CLIPFORGE_READ_TRIES", "6"))), float(os.environ.get("CLIPFORGE_READ_BACKOFF_S", "0.5"))


def _not_found_for_now(error: FileNotFoundError) -> bool:
    """fsspec's HTTP info() reports any failure as FileNotFoundError: one caused by a 5xx or a broken
    connection (not a 404) is worth another try."""
    cause = error.__cause__
    return isinstance(cause, _retryable()) and getattr(cause, "status", None) != 404


def _with_retries(url: str, offset: int, call):
    """call() until it works; RemoteReadError(url, offset) after the last try."""
    tries, wait = _tries()
    for attempt in range(1, tries + 1):
        try:
            return call()
        except FileNotFoundError as e:
            if not _not_found_for_now(e):
                raise
            if attempt == tries:
                raise RemoteReadError(url, offset, tries, e.__cause__) from None
            time.sleep(min(wait * 2 ** (attempt - 1), MAX_WAIT_S))
        except (PermissionError, UserError):
            raise
        except _retryable() as e:
            if attempt == tries:
                raise RemoteReadError(url, offset, tries, e) from None
            time.sleep(min(wait * 2 ** (attempt - 1), MAX_WAIT_S))


def read_range(fs, path: str, url: str, start: int, end: int) -> bytes:
    """Bytes [start, end) (fewer only at the end of the object). A request that fails is retried from the
    first byte not received; the tries start afresh whenever a request made progress."""
    parts, reached = [], start
    while reached < end:
        def fetch(at=reached):
            data = fs.cat_file(path, start=at, end=end)
            if len(data) > end - at:
                raise RangeNotSupported(f"{url}: the server ignores ranged reads (asked {end - at} bytes from "
                                        f"byte {at}, got {len(data)}); serve the shards from one that honours "
                                        "HTTP Range, as S3, GCS and common web servers do")
            return data
        data = _with_retries(url, reached, fetch)
        if not data:
            break  # the end of the object: the caller sees a short read, as from a local file
        parts.append(data)
        reached += len(data)
    return b"".join(parts)


def read_bytes(path: str) -> bytes:
    """A whole (small) file: a manifest, sizes.json."""
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    fs, p = _fs(path)
    return _with_retries(path, 0, lambda: fs.cat_file(p))


def isfile(path: str) -> bool:
    """Whether a file is there. For a URL: its info (HTTP HEAD), retried; fsspec's own isfile() would
    answer False for a server that is only briefly unavailable."""
    if not is_url(path):
        return os.path.isfile(path)
    fs, p = _fs(path)
    try:
        return _with_retries(path, 0, lambda: fs.info(p)).get("type") == "file"
    except (FileNotFoundError, PermissionError):
        return False


def size(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(path)
    fs, p = _fs(path)
    return int(_with_retries(path, 0, lambda: fs.size(p)))


def stamp(path: str) -> tuple:
    """What changes when the file does, for caches keyed on it: a local file's (size, mtime_ns); a URL's size
    and the store's version tag (S3's ETag, an HTTP ETag / Content-MD5 / Digest header), None without one."""
    if not is_url(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    fs, p = _fs(path)
    info = _with_retries(path, 0, lambda: fs.info(p))
    return int(info["size"]), next((str(info[k]) for k in ("ETag", "Content-MD5", "Digest") if info.get(k)), None)


class RemoteFile:
    """A read-only, seekable file over an fsspec URL. pread() is one ranged request (random access: the
    loader); read() after seek() goes through an LRU of two BLOCK-sized blocks (sequential readers: the
    tar header scan, eval, curate). A process forked after it was opened resolves its own file system:
    fsspec's async ones refuse to run in a process other than the one that made them."""

    def __init__(self, url: str):
        self.url, self.name = url, url
        self._pid, (self._fs, self._path) = os.getpid(), _fs(url)
        self._size: Optional[int] = None
        self._pos = 0
        self._blocks: "OrderedDict[int, bytes]" = OrderedDict()

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = size(self.url)
        return self._size

    def _range(self, start: int, end: int) -> bytes:
        if self._pid != os.getpid():
            self._pid, (self._fs, self._path) = os.getpid(), _fs(self.url)
        return read_range(self._fs, self._path, self.url, start, end)

    def pread(self, n: int, offset: int) -> bytes:
        return self._range(offset, offset + n)

    def _block(self, i: int) -> bytes:
        if i not in self._blocks:
            self._blocks[i] = self._range(i * BLOCK, min((i + 1) * BLOCK, self.size))
            while len(self._blocks) > 2:
                self._blocks.popitem(last=False)
        self._blocks.move_to_end(i)
        return self._blocks[i]

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        parts = []
        while self._pos < end:
            block = self._block(self._pos // BLOCK)
            piece = block[self._pos % BLOCK:self._pos % BLOCK + end - self._pos]
            if not piece:
                break  # the object shrank under us: a short read, as from a local file
            parts.append(piece)
            self._pos += len(piece)
        return b"".join(parts)

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self.size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._blocks.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalFile:
    """A local shard with RemoteFile's pread(), so the loader reads both the same way."""

    def __init__(self, path: str):
        self.url, self._fd = path, os.open(path, os.O_RDONLY)

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self._fd, n, offset)

    def close(self) -> None:
        os.close(self._fd)


def open_shard(path: str):
    """A shard for random access (pread): a LocalFile, or a RemoteFile for a URL."""
    return RemoteFile(path) if is_url(path) else LocalFile(path)


def open_sequential(path: str):
    """A shard (or any file) for seek/read: the built-in file, or a RemoteFile for a URL."""
    return RemoteFile(path) if is_url(path) else open(path, "rb")
