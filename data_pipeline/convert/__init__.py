"""Raw datasets (folders, tables, COCO/Flickr json, URL lists) -> tar shard datasets (DESIGN.md "Shard dataset")."""
from .api import convert
from .merge import merge
from .options import ConvertError, ConvertOptions

__all__ = ["convert", "merge", "ConvertError", "ConvertOptions"]
