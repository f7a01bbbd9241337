"""The one record every reader produces: an input item = one image with all its captions."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass
class Item:
    # Local file path (absolute) or URL (http://, https://, file://).
    source: str
    # Raw captions as read (cleaned later, so a bad caption is recorded, not lost while reading).
    captions: List[str] = field(default_factory=list)
    # Further caption sources (--caption-col after the first): member extension -> raw captions, cleaned later.
    caption_sources: Dict[str, List[str]] = field(default_factory=dict)
    # Columns the user asked to keep (--keep-cols), copied into KEY.json and the parquet.
    extra: Dict[str, object] = field(default_factory=dict)
    # (status, message) set by readers when the item is known bad before any image work (e.g. a broken sidecar).
    error: Optional[Tuple[str, str]] = None


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://", "file://"))


def key_width(num_items: int) -> int:
    # Keys are the item's global index, zero-padded: no dots, unique, stable for the same input and options.
    return max(9, len(str(max(num_items - 1, 0))))


def make_key(index: int, width: int) -> str:
    return str(index).zfill(width)
