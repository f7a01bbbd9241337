"""Curation: a shard dataset -> a new, resharded one holding the samples that pass the filters (DataComp's basic
filters, keep/remove lists, a precomputed score, embedding near-duplicates), with every input sample's fate in
curation.parquet. `clipforge curate` (data_pipeline/curate/cli.py); docs/convert.md "Curation"."""
from .api import curate
from .options import CurateError, CurateOptions

__all__ = ["curate", "CurateError", "CurateOptions"]
