"""Read every INPUT into one ordered list of Items (the order decides keys and shards, so it is deterministic)."""
import os
from typing import List, Tuple

from ..items import Item, is_url
from ..options import ConvertError, ConvertOptions
from .annotations import read_coco, read_flickr
from .folder import captions_table, read_folder
from .tables import captions_per_item, read_table

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl", ".txt": "urls"}


def detect_format(path: str) -> Tuple[str, str]:
    """-> (format, why) for --format auto."""
    if os.path.isdir(path):
        return "folder", "a directory"
    extension = os.path.splitext(path)[1].lower()
    if extension in EXTENSIONS:
        return EXTENSIONS[extension], f"extension {extension}"
    if extension == ".json":
        if not os.path.isfile(path):
            raise ConvertError(f"{path}: no such file")
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            head = handle.read(1 << 20)
        # COCO captions files have "annotations"; Karpathy split files have per-image "sentences".
        if '"annotations"' in head:
            return "coco", "json with 'annotations'"
        if '"sentences"' in head:
            return "flickr", "json with per-image 'sentences'"
        raise ConvertError(f"{path}: json is neither COCO captions ('annotations') nor a Karpathy split "
                           "('images' with 'sentences'); pass --format")
    if not os.path.exists(path):
        raise ConvertError(f"{path}: no such file or directory")
    raise ConvertError(f"{path}: cannot tell the format from extension {extension or '(none)'!r}; "
                       "pass --format csv|tsv|parquet|jsonl|coco|flickr|urls|folder")


def _no_caption_columns(path: str, fmt: str, options: ConvertOptions) -> None:
    """Further caption sources come from table columns: refused, not ignored, for inputs that have none."""
    if len(options.caption_col) > 1:
        raise ConvertError(f"{path}: a {fmt} input has no caption columns for the further --caption-col "
                           f"{', '.join(options.caption_col[1:])}; extra caption sources need a table input")
    if options.neg_caption_col:
        raise ConvertError(f"{path}: a {fmt} input has no column {options.neg_caption_col!r} for --neg-caption-col; "
                           "hard negatives need a table input")


def read_one(path: str, fmt: str, options: ConvertOptions) -> Tuple[List[Item], str]:
    """-> (items, note on how they were grouped)."""
    if fmt == "folder":
        if not os.path.isdir(path):
            raise ConvertError(f"{path}: --format folder needs a directory")
        table = captions_table(path)
        if table:
            table_fmt = EXTENSIONS[os.path.splitext(table)[1]]
            return read_table(table, table_fmt, options, base_dir=options.image_root or path)
        _no_caption_columns(path, fmt, options)
        items = read_folder(path, options)
    elif fmt in ("coco", "flickr"):
        _no_caption_columns(path, fmt, options)
        items = (read_coco if fmt == "coco" else read_flickr)(path, options)
    else:
        return read_table(path, fmt, options)
    return items, f"{len(items)} images, {captions_per_item(items)}"


def load_include_list(path: str) -> set:
    if not os.path.isfile(path):
        raise ConvertError(f"--include-list {path}: no such file")
    with open(path, encoding="utf-8") as handle:
        return {line.strip() for line in handle if line.strip()}


def _name(source: str) -> str:
    return os.path.basename(source.split("?")[0].rstrip("/")) if is_url(source) else os.path.basename(source)


def read_inputs(options: ConvertOptions, log=print) -> Tuple[List[Item], List[str]]:
    """-> (items, one note per input: format, grouping, guessed columns; the summary repeats them)."""
    items: List[Item] = []
    notes: List[str] = []
    for path in options.inputs:
        fmt, why = (options.fmt, "--format") if options.fmt != "auto" else detect_format(path)
        read, note = read_one(path, fmt, options)
        notes.append(f"{path}: format {fmt} ({why}), {note}")
        log(f"clipforge convert: {notes[-1]}")
        items.extend(read)
    if options.include_list:
        wanted = load_include_list(options.include_list)
        items = [item for item in items if _name(item.source) in wanted or item.source in wanted]
        found = {_name(item.source) for item in items}
        missing = len(wanted - found)
        log(f"clipforge convert: --include-list kept {len(items)} items"
            + (f"; {missing} listed names are in no input" if missing else ""))
    if not items:
        raise ConvertError(f"no input items in {', '.join(options.inputs)}"
                           + (f" after --include-list {options.include_list}" if options.include_list else ""))
    return items, notes

