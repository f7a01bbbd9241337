"""Per-shard work (runs in worker processes): captions, fetch, image processing -> one result per input item."""
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Tuple

from .captions import clean_captions
from .fetch import fetch
from .images import ItemError, process_image
from .items import Item
from .options import ConvertOptions


def _visible(text: str) -> str:
    """Raw caption text for the parquet: non-UTF-8 bytes shown as \\udcXX escapes, never lost."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clean_sources(sources: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """Further caption sources, cleaned as the primary is. A source left empty is omitted (that sample has no
    KEY.NAME.txt: the loader falls back to KEY.txt and counts it); bytes that are not UTF-8 reject the item."""
    cleaned = {}
    for name, raw in sources.items():
        captions, status, message = clean_captions(raw)
        if status == "invalid_caption":
            raise ItemError(status, "invalid caption", f"{name} source: {message}")
        if captions:
            cleaned[name] = captions
    return cleaned


def process_item(key: str, item: Item, options: ConvertOptions, fetched=None) -> dict:
    """`fetched`: the source's bytes or its download's ItemError when prefetch.py got them; None: fetch here."""
    result = {"key": key, "source": item.source, "captions": [], "status": "success", "reason": "",
              "error_message": "", "width": None, "height": None, "original_width": None,
              "original_height": None, "sha256": None, "data": None, "extra": item.extra, "caption_sources": {},
              "raw_caption_sources": {name: _visible("\n".join(raw)) for name, raw in item.caption_sources.items()},
              "raw_caption": _visible("\n".join(item.captions))}
    try:
        if item.error:
            raise ItemError(item.error[0], item.error[1].split(":")[0], item.error[1])
        captions, status, message = clean_captions(item.captions)
        if status:
            raise ItemError(status, status.replace("_", " "), message)
        result["captions"] = captions
        result["caption_sources"] = clean_sources(item.caption_sources)
        if isinstance(fetched, ItemError):
            raise fetched
        data = fetch(item.source) if fetched is None else fetched
        result["sha256"] = hashlib.sha256(data).hexdigest()
        processed = process_image(data, options)
    except ItemError as error:
        result.update(status=error.status, reason=error.reason, error_message=str(error))
        return result
    except Exception as error:  # a codec bug on one odd file must cost that item, not the run: record it
        result.update(status="failed_to_process", reason=type(error).__name__,
                      error_message=f"{type(error).__name__}: {error} (please report this file)")
        return result
    result.update(data=processed.data, width=processed.width, height=processed.height,
                  original_width=processed.original_width, original_height=processed.original_height)
    return result


def process_chunk(task: Tuple[Optional[int], list, ConvertOptions],
                  on_item: Optional[Callable[[], None]] = None) -> Tuple[Optional[int], List[dict]]:
    """Items of one shard (all, or a chunk) -> (shard index, results in input order). Threads change speed only.
    Items are (key, item), or (key, item, fetched) from prefetch.py (index None: a chunk across shards)."""
    index, keyed_items, options = task
    # URL downloads are fetched ahead (prefetch.py): what is left here is image work, one thread a worker;
    # local reads may gain from more threads on a network file system (--threads).
    threads = options.threads if options.threads and all(len(entry) == 2 for entry in keyed_items) else 1

    def one(entry):
        result = process_item(*entry[:2], options, *entry[2:])
        if on_item:
            on_item()
        return result

    if threads == 1:
        return index, [one(entry) for entry in keyed_items]
    with ThreadPoolExecutor(threads) as pool:
        return index, list(pool.map(one, keyed_items))


def worker_ready(_) -> int:
    """A no-op task: running it means this worker has imported the codecs (importing this module did that)."""
    return 0
