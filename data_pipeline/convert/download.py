"""HTTP(S) downloads of URL inputs: one asyncio event loop (aiohttp) in a thread of the writing process, with
`concurrency` requests in flight, keep-alive connections per host and DNS answers cached for 5 minutes; a timeout
for the whole body, retries with backoff, refusal when the site opted out (optout.py).

Why an event loop rather than a thread per download (urllib3, until December 2026): 1,500 loopback downloads at
128 threads cost the writing process ~1 M futex calls (strace: the GIL handed between threads) and ~2 ms of CPU
per image, close to the image work's own 2.5 ms; aiohttp's C parser on one thread costs ~0.3 ms per image, and
512 requests in flight (img2dataset runs 256 threads in each process) cost no more than 128.
"""
import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Union

import aiohttp

from .images import ItemError
from .optout import ROBOTS, check_header
from .options import ConvertOptions

# Worth retrying: the server or network may recover. A 404 or 403 will not.
RETRY_STATUSES = (408, 425, 429, 500, 502, 503, 504)
DNS_CACHE_S = 300
MAX_REDIRECTS = 10


class _Failed(Exception):
    """One attempt failed: (reason, detail, HTTP status or None for a network error)."""

    def __init__(self, reason: str, detail: str, status: Optional[int] = None):
        super().__init__(reason)
        self.reason, self.detail, self.status = reason, detail, status


def _reason(error: Exception, timeout: float, got_headers: bool):
    """(reason, detail) of an attempt that raised; the names are the ones the parquet has always used."""
    if isinstance(error, TimeoutError):  # asyncio's total timeout and aiohttp's socket timeouts alike
        if got_headers:
            return "timeout", f"body not complete within {timeout:g} s (server trickles)"
        return "timeout", f"no response within {timeout:g} s"
    if isinstance(error, aiohttp.ClientConnectorError):  # refused, unreachable, or the name did not resolve
        return "cannot connect", str(error)
    if isinstance(error, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        return "connection broken", str(error) or type(error).__name__  # a body cut off, a connection reset
    if isinstance(error, aiohttp.TooManyRedirects):
        return "too many redirects", f"more than {MAX_REDIRECTS}"
    return type(error).__name__, str(error)


class Downloader:
    """`submit(url, done)`: download in the background; `done(bytes | ItemError)` is called on the loop's thread."""

    def __init__(self, options: ConvertOptions, concurrency: int):
        self.options, self._closed = options, False
        self._loop = asyncio.new_event_loop()
        # robots.txt checks block (requests): as many threads as downloads, so hosts are asked in parallel as before
        # (asyncio's default is 6 on 2 cores); threads start only when a check runs
        self._loop.set_default_executor(ThreadPoolExecutor(concurrency, thread_name_prefix="robots"))
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="downloads")
        self._thread.start()
        self._session = asyncio.run_coroutine_threadsafe(self._open(concurrency), self._loop).result()

    async def _open(self, concurrency: int) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=DNS_CACHE_S)
        # trust_env: the environment's HTTP(S)_PROXY / NO_PROXY, as urllib and requests read them
        return aiohttp.ClientSession(connector=connector, trust_env=True,
                                     headers={"User-Agent": self.options.user_agent})

    def submit(self, url: str, done: Callable[[Union[bytes, ItemError]], None]) -> None:
        if self._closed:  # the conversion is stopping: nothing waits for this item any more
            return
        asyncio.run_coroutine_threadsafe(self._one(url, done), self._loop)

    async def _one(self, url: str, done) -> None:
        try:
            data = await self.download(url)
        except ItemError as error:
            data = error
        except Exception as error:  # never lose an item: a download that died unseen would hang its shard
            data = ItemError("failed_to_download", type(error).__name__, f"{url}: {error}")
        done(data)

    async def download(self, url: str) -> bytes:
        options = self.options
        if options.respect_robots:  # robots.txt through requests, once per host (optout.py), off the loop
            await self._loop.run_in_executor(None, ROBOTS.check, url, options.timeout, options.user_agent)
        for attempt in range(options.retries + 1):
            if attempt:
                await asyncio.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
            try:
                return await self._attempt(url)
            except _Failed as failed:
                reason, detail = failed.reason, failed.detail
                if failed.status is not None and failed.status not in RETRY_STATUSES:
                    break
        tries = f" (after {attempt + 1} tries)" if attempt else ""
        raise ItemError("failed_to_download", reason, f"{url}: {detail}{tries}")

    async def _attempt(self, url: str) -> bytes:
        timeout, got_headers = self.options.timeout, False
        try:
            # total: the whole body within the timeout, so a server that trickles cannot hold a request forever
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=timeout),
                                         max_redirects=MAX_REDIRECTS) as response:
                got_headers = True
                if response.status != 200:
                    raise _Failed(f"http {response.status}", f"server answered {response.status} {response.reason}",
                                  response.status)
                if not self.options.disallow_optout:  # before the body: an opted-out image is never downloaded
                    check_header(url, response.headers.getall("X-Robots-Tag", []))
                data = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise _Failed(*_reason(error, timeout, got_headers))
        if not data:
            raise ItemError("failed_to_download", "empty response", url)
        return data

    def close(self) -> None:
        """Cancel what is still downloading (an error elsewhere stopped the conversion), close the connections."""
        if self._closed:
            return
        self._closed = True

        async def shut():
            pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self._session.close()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()  # also shuts the robots.txt threads down
