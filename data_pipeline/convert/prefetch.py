"""URL inputs: the downloads run in the writing process (download.py's event loop), ahead of the image work; the
workers get the bytes.

Why not in the workers, as before: a worker's chunk of 64 items returned when its slowest download did, and at a
few % of slow bodies (1-2 s) most chunks hold one (1 - 0.97^64 = 86 %), so the cores idled while a thread waited.
Here a chunk is made of downloads in the order they finish, so a slow or failing URL holds back only the writing of
its own shard. At most 2 items per download in flight are downloading or downloaded and not yet processed, which
bounds the source bytes held (LAION's average ~0.3 MB: ~300 MB for 2 workers); the results (~40 KB each at 256 px)
wait for their shard to be whole, as before. (Letting more start, under a byte budget instead, was slower: 5.3-5.8
vs 5.1-5.4 s for bench/convert_urls.py's 1,500 images, the extra early requests slowing the server and the cores.)
"""
import queue
import threading
import time
from typing import Callable, Iterator, List, Tuple

from .options import ConvertOptions
from .process import process_chunk

# Downloads in flight per worker, img2dataset's 256 threads per process: at 50-300 ms a download that is ~1,400
# images/s asked for, so a few slow hosts or 1-2 s bodies do not starve the cores (~400 images/s each at 500x375).
DOWNLOADS_PER_WORKER = 256
# A chunk waits this long for more finished downloads before it goes to a worker with fewer than `size` items.
GATHER_S = 0.05


def is_remote(source: str) -> bool:
    return source.startswith(("http://", "https://"))


class Prefetch:
    """Starts downloading the items of `todo` (shard tasks) at once, in input order."""

    def __init__(self, todo: List[tuple], options: ConvertOptions):
        self.options = options
        self.items = [(key, item) for _, keyed, _ in todo for key, item in keyed]
        self.sizes = {index: len(keyed) for index, keyed, _ in todo}
        self.places = {key: (index, position) for index, keyed, _ in todo for position, (key, _) in enumerate(keyed)}
        concurrency = (options.threads or DOWNLOADS_PER_WORKER) * options.workers
        self._room = threading.Semaphore(2 * concurrency)
        self._ready: "queue.Queue[tuple]" = queue.Queue()
        from .download import Downloader  # aiohttp (~0.13 s to import): only conversions with URLs pay for it
        self._downloads = Downloader(options, concurrency)
        self._stop = threading.Event()
        threading.Thread(target=self._feed, daemon=True, name="download-feed").start()

    def _feed(self) -> None:
        for key, item in self.items:
            self._room.acquire()
            if self._stop.is_set():
                return
            if is_remote(item.source) and not item.error:
                self._downloads.submit(item.source, lambda data, key=key, item=item: self._ready.put((key, item, data)))
            else:  # a local file (read by the worker) or an item already known bad
                self._ready.put((key, item, None))

    def chunks(self, size: int) -> Iterator[list]:
        """(key, item, bytes | ItemError | None) in the order the downloads finish, up to `size` per chunk."""
        left = len(self.items)
        while left:
            chunk = [self._ready.get()]
            deadline = time.monotonic() + GATHER_S
            while len(chunk) < min(size, left):
                try:
                    chunk.append(self._ready.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            left -= len(chunk)
            yield chunk

    def processed(self, count: int) -> None:
        self._room.release(count)

    def close(self) -> None:
        self._stop.set()
        self._room.release(len(self.items))  # wakes the feeder, which then stops
        self._downloads.close()


def ordered_shards(fetch: Prefetch, mapper: Callable, chunk: int, bar) -> Iterator[Tuple[int, List[dict]]]:
    """(shard index, its results in input order) for every shard, in index order, each as soon as it is whole.
    `mapper(process_chunk, tasks)` is `map` in this process or a pool's imap_unordered."""
    buffers = {index: [None] * size for index, size in fetch.sizes.items()}
    left, order = dict(fetch.sizes), list(fetch.sizes)
    tasks = ((None, part, fetch.options) for part in fetch.chunks(chunk))
    try:
        for _, results in mapper(process_chunk, tasks):
            bar.update(len(results))
            fetch.processed(len(results))
            for result in results:
                index, position = fetch.places[result["key"]]
                buffers[index][position] = result
                left[index] -= 1
            while order and left[order[0]] == 0:
                index = order.pop(0)
                yield index, buffers.pop(index)
    finally:
        fetch.close()
