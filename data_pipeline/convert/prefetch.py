"""URL inputs: the downloads run in the writing process, ahead of the image work; the workers get the bytes.

Why not in the workers, as before: a worker's chunk of 64 items returned when its slowest download did, and at a
few % of slow bodies (1-2 s) most chunks hold one (1 - 0.97^64 = 86 %), so the cores idled while a thread waited.
Here a chunk is made of downloads in the order they finish, so a slow or failing URL holds back only the writing of
its own shard. At most 4 items per download thread are downloading or downloaded and not yet processed, which
bounds the source bytes held (LAION's average ~0.3 MB: ~150 MB for 2 workers); the results (~40 KB each at 256 px)
wait for their shard to be whole, as before.
"""
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Tuple

from .fetch import download
from .images import ItemError
from .options import ConvertOptions
from .process import process_chunk

# Downloads in flight per worker: at 50-300 ms a download, 64 keep ~300 images/s coming, above what a core
# decodes, resizes and encodes (~280/s for 500x375 photos); img2dataset runs 256 threads in each process.
DOWNLOADS_PER_WORKER = 64
# A chunk waits this long for more finished downloads before it goes to a worker with fewer than `size` items.
GATHER_S = 0.05


def is_remote(source: str) -> bool:
    return source.startswith(("http://", "https://"))


class Prefetch:
    """Starts downloading the items of `todo` (shard tasks) at once, in input order, in threads."""

    def __init__(self, todo: List[tuple], options: ConvertOptions):
        self.options = options
        self.items = [(key, item) for _, keyed, _ in todo for key, item in keyed]
        self.sizes = {index: len(keyed) for index, keyed, _ in todo}
        self.places = {key: (index, position) for index, keyed, _ in todo for position, (key, _) in enumerate(keyed)}
        threads = (options.threads or DOWNLOADS_PER_WORKER) * options.workers
        self._room = threading.Semaphore(4 * threads)
        self._ready: "queue.Queue[tuple]" = queue.Queue()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="download")
        self._stop = threading.Event()
        threading.Thread(target=self._feed, daemon=True, name="download-feed").start()

    def _feed(self) -> None:
        for key, item in self.items:
            self._room.acquire()
            if self._stop.is_set():
                return
            if is_remote(item.source) and not item.error:
                self._pool.submit(self._download, key, item)
            else:  # a local file (read by the worker) or an item already known bad
                self._ready.put((key, item, None))

    def _download(self, key: str, item) -> None:
        try:
            data = download(item.source, self.options)
        except ItemError as error:
            data = error
        except Exception as error:  # never lose an item: a thread that died would hang its shard
            data = ItemError("failed_to_download", type(error).__name__, f"{item.source}: {error}")
        self._ready.put((key, item, data))

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
        self._pool.shutdown(wait=False, cancel_futures=True)


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
