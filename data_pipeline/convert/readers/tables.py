"""Table inputs (csv, tsv, parquet, jsonl, plain URL lists) -> Items; rows sharing an image become one Item."""
import csv
import json
import os
from typing import Dict, List, Optional, Tuple

from ..items import Item, is_url
from ..options import ConvertError, ConvertOptions

IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_name", "filename", "file", "path", "url", "image_url", "img")
CAPTION_COLUMNS = ("caption", "captions", "text", "title", "description", "sentence")


def _pick(columns: List[str], wanted: Optional[str], candidates: Tuple[str, ...], flag: str, path: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ConvertError(f"{path}: no column {wanted!r} for {flag} (columns: {', '.join(columns)})")
        return wanted
    lower = {column.lower(): column for column in columns}
    for candidate in candidates:
        if candidate in lower:
            return lower[candidate]
    raise ConvertError(f"{path}: cannot tell which column is meant for {flag} (columns: {', '.join(columns)}); "
                       f"pass {flag} NAME")


def _read_rows(path: str, fmt: str) -> Tuple[List[str], List[Dict]]:
    # Text is decoded with surrogateescape: a non-UTF-8 byte is kept and the row is rejected later with its reason.
    if fmt in ("csv", "tsv"):
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle, delimiter="," if fmt == "csv" else "\t")
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    if fmt == "parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        return list(table.column_names), table.to_pylist()
    if fmt == "jsonl":
        rows, columns = [], {}
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ConvertError(f"{path}:{number}: not a JSON object ({error.msg}); fix or remove the line")
                if not isinstance(row, dict):
                    raise ConvertError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
                rows.append(row)
                columns.update(dict.fromkeys(row))
        return list(columns), rows
    if fmt == "urls":
        rows = []
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                line = line.rstrip("\r\n")
                if line.strip():
                    url, _, caption = line.partition("\t") if "\t" in line else line.strip().partition(" ")
                    rows.append({"url": url.strip(), "caption": caption})
        return ["url", "caption"], rows
    raise ValueError(fmt)


def _captions_of(value) -> List[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def resolve_source(value: str, base_dir: str) -> str:
    if is_url(value):
        return value
    return os.path.normpath(os.path.join(base_dir, value))


def captions_per_item(items: List[Item]) -> str:
    """"5 captions each" or "1-5 captions each (mean 4.2)": how rows were grouped, said in the summary."""
    counts = [len(item.captions) for item in items] or [0]
    low, high = min(counts), max(counts)
    if low == high:
        return f"{low} caption{'' if low == 1 else 's'} each"
    return f"{low}-{high} captions each (mean {sum(counts) / len(counts):.1f})"


def read_table(path: str, fmt: str, options: ConvertOptions,
               base_dir: Optional[str] = None) -> Tuple[List[Item], str]:
    """-> (items, note): the note says how rows were grouped and which columns were guessed."""
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    columns, rows = _read_rows(path, fmt)
    image_col = _pick(columns, options.image_col, IMAGE_COLUMNS, "--image-col", path)
    given_caption = options.caption_col[0] if options.caption_col else None
    caption_col = _pick(columns, given_caption, CAPTION_COLUMNS, "--caption-col", path)
    sources = options.extra_caption_sources()  # further caption sources and KEY.neg.txt: one list per member
    for flag, wanted in (("--caption-col", options.caption_col[1:]),
                         ("--neg-caption-col", [options.neg_caption_col] if options.neg_caption_col else []),
                         ("--keep-cols", options.keep_cols)):
        missing = [column for column in wanted if column not in columns]
        if missing:
            raise ConvertError(f"{path}: no column {missing[0]!r} for {flag} (columns: {', '.join(columns)})")
    base_dir = base_dir or options.image_root or os.path.dirname(os.path.abspath(path))
    items: Dict[str, Item] = {}
    for row in rows:
        value = row.get(image_col)
        value = "" if value is None else str(value).strip()
        item = items.get(value)
        if item is None:
            source = resolve_source(value, base_dir) if value else f"{path} (row with empty {image_col!r})"
            item = Item(source=source, extra={c: row.get(c) for c in options.keep_cols})
            if not value:
                item.error = ("failed_to_read", f"empty {image_col!r} cell: the row names no image")
            # An empty image cell is its own item each time: never merge unrelated bad rows.
            items[value if value else f"\0{len(items)}"] = item
        item.captions.extend(_captions_of(row.get(caption_col)))
        for name, column in sources.items():
            item.caption_sources.setdefault(name, []).extend(_captions_of(row.get(column)))
    guessed = [f"{flag} {column!r}" for flag, column, given in
               (("--image-col", image_col, options.image_col), ("--caption-col", caption_col, given_caption))
               if given is None]
    note = f"{len(rows)} rows -> {len(items)} images, {captions_per_item(list(items.values()))}"
    return list(items.values()), note + (f"; guessed columns {', '.join(guessed)}" if guessed else "")
