"""The streaming train loader: shard datasets -> per-rank batches, exactly resumable (docs/loader.md)."""
from clipforge.data_pipeline.stream.loader import LoaderStateError, TrainLoader, build_train_loader

__all__ = ["build_train_loader", "TrainLoader", "LoaderStateError"]
