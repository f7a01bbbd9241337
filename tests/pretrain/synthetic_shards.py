"""Real train/val shards of the bundled synthetic scenes (the converter's output), for the 2-rank CLI tests."""
from pathlib import Path

from clipforge.data_pipeline.convert import convert
from clipforge.data_pipeline.synthetic import make_synthetic_dataset


def synthetic_shards(root: Path, num_val: int) -> Path:
    """root/train and root/val: 64 train images and num_val val images, 64 px, 32 samples per shard."""
    captions = make_synthetic_dataset(str(root / "raw"), num_train=64, num_val=num_val, size=64)
    for split in ("train", "val"):
        convert([str(captions)], str(root / split), image_size=64, samples_per_shard=32,
                include_list=str(root / "raw" / "splits" / f"{split}.txt"), progress=False)
    return root
