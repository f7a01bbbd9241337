"""Source bytes of one local item: a path or a file:// URL. http(s) sources are downloaded ahead, in the writing
process (prefetch.py, download.py), and reach the workers as bytes."""
import urllib.parse
import urllib.request

from .images import ItemError


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ItemError("failed_to_read", "file not found", path)
    except IsADirectoryError:
        raise ItemError("failed_to_read", "is a directory", path)
    except OSError as error:
        raise ItemError("failed_to_read", "cannot read file", f"{path}: {error.strerror or error}")
    if not data:
        raise ItemError("failed_to_read", "empty file", f"{path} has 0 bytes")
    return data


def fetch(source: str) -> bytes:
    if source.startswith("file://"):
        return read_file(urllib.request.url2pathname(urllib.parse.urlparse(source).path))
    return read_file(source)
