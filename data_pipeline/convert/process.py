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


def process_item(key: str, item: Item, options: ConvertOptions) -> dict:
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
        data = fetch(item.source, options)
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


def process_chunk(task: Tuple[int, List[Tuple[str, Item]], ConvertOptions],
                  on_item: Optional[Callable[[], None]] = None) -> Tuple[int, List[dict]]:
    """Items of one shard (all, or a chunk) -> (shard index, results in input order). Threads change speed only."""
    index, keyed_items, options = task
    # Downloads wait on the network: 16 threads keep a core busy. Local reads (and file:// URLs) do not wait.
    remote = any(item.source.startswith(("http://", "https://")) for _, item in keyed_items)
    threads = options.threads or (16 if remote else 1)

    def one(pair):
        result = process_item(pair[0], pair[1], options)
        if on_item:
            on_item()
        return result

    if threads == 1:
        return index, [one(pair) for pair in keyed_items]
    with ThreadPoolExecutor(threads) as pool:
        return index, list(pool.map(one, keyed_items))


def worker_ready(_) -> int:
    """A no-op task: running it means this worker has imported the codecs (importing this module did that)."""
    return 0
