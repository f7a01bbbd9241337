"""COCO captions json and Karpathy-split Flickr8k/30k (and COCO) json -> Items, all captions of an image kept."""
import json
import os
from typing import List

from ..items import Item
from ..options import ConvertError, ConvertOptions


def load_json(path: str):
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file")
    except json.JSONDecodeError as error:
        raise ConvertError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})")


def read_coco(path: str, options: ConvertOptions) -> List[Item]:
    data = load_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ConvertError(f"{path}: a COCO captions file needs top-level 'images' and 'annotations' lists")
    root = options.image_root or os.path.dirname(os.path.abspath(path))
    items, by_id = [], {}
    for number, image in enumerate(data["images"]):
        if "id" not in image or "file_name" not in image:
            raise ConvertError(f"{path}: images[{number}] lacks 'id' or 'file_name'")
        item = Item(source=os.path.normpath(os.path.join(root, image["file_name"])),
                    extra={c: image.get(c) for c in options.keep_cols})
        by_id[image["id"]] = item
        items.append(item)
    for number, annotation in enumerate(data["annotations"]):
        item = by_id.get(annotation.get("image_id"))
        if item is None:
            raise ConvertError(f"{path}: annotations[{number}] refers to image_id {annotation.get('image_id')!r} "
                               "that is not in 'images'")
        item.captions.append(str(annotation.get("caption") or ""))
    return items


def read_flickr(path: str, options: ConvertOptions) -> List[Item]:
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ConvertError(f"{path}: a Karpathy-split json needs a top-level 'images' list")
    root = options.image_root or os.path.dirname(os.path.abspath(path))
    items = []
    for number, image in enumerate(data["images"]):
        if "filename" not in image or "sentences" not in image:
            raise ConvertError(f"{path}: images[{number}] lacks 'filename' or 'sentences'")
        # Karpathy's COCO split puts "restval" images in training; keep that convention.
        split = image.get("split")
        if options.split and split != options.split and not (options.split == "train" and split == "restval"):
            continue
        relative = os.path.join(image.get("filepath", ""), image["filename"])
        captions = [str(s.get("raw") or " ".join(s.get("tokens", []))) for s in image["sentences"]]
        extra = {c: image.get(c) for c in options.keep_cols}
        items.append(Item(source=os.path.normpath(os.path.join(root, relative)), captions=captions, extra=extra))
    return items
