"""Folder input: image files (recursive, sorted) with captions from sidecar NAME.txt / NAME.json, or a captions table."""
import json
import os
from typing import List

from ..items import Item
from ..options import ConvertOptions

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TABLE_NAMES = ("captions.csv", "captions.tsv", "captions.jsonl", "captions.parquet")


def captions_table(folder: str) -> str:
    """A folder that holds captions.csv (etc.) is that table, with paths relative to the folder."""
    for name in TABLE_NAMES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return ""


def _sidecar_captions(stem: str) -> tuple:
    """-> (captions, error). Sidecars are decoded with surrogateescape so bad bytes reach caption cleaning."""
    if os.path.isfile(stem + ".txt"):
        with open(stem + ".txt", encoding="utf-8", errors="surrogateescape") as handle:
            return [line for line in handle.read().splitlines()], None
    if os.path.isfile(stem + ".json"):
        try:
            with open(stem + ".json", encoding="utf-8", errors="surrogateescape") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as error:
            return [], f"{stem}.json: not valid JSON ({error.msg})"
        value = data.get("captions", data.get("caption")) if isinstance(data, dict) else None
        if isinstance(value, list):
            return [str(v) for v in value], None
        return ([str(value)] if value is not None else []), None
    return [], None


def read_folder(folder: str, options: ConvertOptions) -> List[Item]:
    items = []
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(directory, name)
            captions, error = _sidecar_captions(os.path.splitext(path)[0])
            item = Item(source=os.path.abspath(path), captions=captions)
            if error:
                item.error = ("invalid_caption", error)
            items.append(item)
    return items
