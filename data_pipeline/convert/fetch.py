"""Source bytes of one item: a local file, a file:// URL, or an http(s) download with timeout, retries and backoff,
refused when the site opted out (data_pipeline/convert/optout.py)."""
import time
import urllib.parse
import urllib.request

from .images import ItemError
from .optout import ROBOTS, check_header
from .options import ConvertOptions

# Worth retrying: the server or network may recover. A 404 or 403 will not.
RETRY_STATUSES = (408, 425, 429, 500, 502, 503, 504)


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


def _body(response, url: str, timeout: float) -> bytes:
    """The whole body within `timeout` seconds: requests' timeout is per socket read, so a server that trickles
    a few bytes at a time would otherwise hold a thread forever."""
    started, parts = time.monotonic(), []
    for part in response.iter_content(1 << 16):
        parts.append(part)
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"body not complete within {timeout:g} s (server trickles)")
    data = b"".join(parts)
    if not data:
        raise ItemError("failed_to_download", "empty response", url)
    return data


def download(url: str, options: ConvertOptions) -> bytes:
    import requests  # imported here: local-only conversions never need it

    if options.respect_robots:
        ROBOTS.check(url, options.timeout, options.user_agent)
    reason, detail = "", ""
    for attempt in range(options.retries + 1):
        if attempt:
            time.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
        try:
            with requests.get(url, timeout=options.timeout, headers={"User-Agent": options.user_agent},
                              stream=True) as response:
                if response.status_code == 200:
                    if not options.disallow_optout:  # before the body: an opted-out image is never downloaded
                        check_header(url, response.raw.headers.getlist("X-Robots-Tag"))
                    return _body(response, url, options.timeout)
                reason = f"http {response.status_code}"
                detail = f"server answered {response.status_code} {response.reason}"
        except requests.Timeout:
            reason, detail = "timeout", f"no response within {options.timeout:g} s"
            continue
        except requests.RequestException as error:
            reason, detail = type(error).__name__, str(error)
            continue
        except TimeoutError as error:
            reason, detail = "timeout", str(error)
            continue
        if response.status_code not in RETRY_STATUSES:
            break
    tries = f" (after {attempt + 1} tries)" if attempt else ""
    raise ItemError("failed_to_download", reason, f"{url}: {detail}{tries}")


def fetch(source: str, options: ConvertOptions) -> bytes:
    if source.startswith("file://"):
        return read_file(urllib.request.url2pathname(urllib.parse.urlparse(source).path))
    if source.startswith(("http://", "https://")):
        return download(source, options)
    return read_file(source)
