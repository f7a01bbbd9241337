"""Real shard datasets for the loader tests: tars of real JPEGs written with webdataset's TarWriter.

Every image is a solid colour that encodes its global index, so a test can check which sample
it got from the pixels as well as from the key.
"""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image


def jpeg_bytes(index: int, size=(40, 32)) -> bytes:
    rng = np.random.default_rng(index)
    pixels = np.full((size[1], size[0], 3), rng.integers(0, 256, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_dataset(out_dir, num_shards: int, per_shard, prefix: str = "s", manifest: bool = True,
                  captions_per_sample: int = 2) -> list:
    """Write shards shard-00000i.tar with `per_shard` samples each (int or list); return all keys in file order.

    Key = f"{prefix}{global_index:06d}"; KEY.txt holds `captions_per_sample` lines "caption j of KEY".
    """
    import webdataset as wds

    os.makedirs(out_dir, exist_ok=True)
    counts = per_shard if isinstance(per_shard, list) else [per_shard] * num_shards
    keys, sizes, index = [], {}, 0
    for shard_i, count in enumerate(counts):
        name = f"shard-{shard_i:06d}.tar"
        with wds.TarWriter(os.path.join(out_dir, name)) as sink:
            for _ in range(count):
                key = f"{prefix}{index:06d}"
                text = "\n".join(f"caption {j} of {key}" for j in range(captions_per_sample))
                sink.write({"__key__": key, "jpg": jpeg_bytes(index), "txt": text,
                            "json": json.dumps({"index": index}).encode()})
                keys.append(key)
                index += 1
        sizes[name] = count
    with open(os.path.join(out_dir, "sizes.json"), "w") as f:
        json.dump(sizes, f)
    if manifest:
        doc = {"format": "clipforge-shards", "version": 1, "num_samples": index,
               "shards": [{"name": n, "samples": c, "bytes": os.path.getsize(os.path.join(out_dir, n)),
                           "sha256": ""} for n, c in sizes.items()]}
        with open(os.path.join(out_dir, "manifest.json"), "w") as f:
            json.dump(doc, f)
    return keys


@pytest.fixture
def small_dataset(tmp_path):
    """4 shards x 10 samples (40 samples, keys s000000..s000039) with a manifest."""
    out = tmp_path / "ds"
    keys = write_dataset(out, num_shards=4, per_shard=10)
    return out, keys
