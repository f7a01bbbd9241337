"""bench.loader's second peer: MosaicML Streaming 0.13.0 (`mosaicml-streaming`, the library users pick for
exact resume) reading the bench's images from its MDS format. Each function runs in its own process with
.venv-peers/streaming on PYTHONPATH (bench.loader starts them); clipforge's venv never sees the package.

    python -m bench.loader_streaming --write SHARDS MDS     # the shards' members -> MDS, once per bench run
    python -m bench.loader_streaming --child MDS EPOCHS     # measure; prints bench.loader.measure's JSON

What is identical to the open_clip row (open_clip_train.data.get_wds_dataset on webdataset 0.2.86), so that
only the reader differs: the same JPEG bytes, KEY.txt text and KEY.json of the same 300 samples; per sample,
webdataset's "pilrgb" decode (PIL open + load + convert RGB), open_clip's train transform (RandomResizedCrop
scale 0.9-1.0 to 224 px, bicubic, ToTensor, normalise: float32), the tokenizer on the whole KEY.txt (row 0),
JSON decode of KEY.json; batches of 64 stacked by the DataLoader; ONE persistent worker, prefetch 2.
What differs is Streaming's own: MDS shards of about the tar shards' bytes, its py1e shuffle (seed 0) and
sample partitioning, StreamingDataLoader (the one that keeps the resume state).
"""
import io
import json
import os
import sys
import tarfile
from pathlib import Path

from bench.loader import BATCH, IMAGE_SIZE, MODEL, measure

STREAMING_PATH = Path(__file__).resolve().parents[1] / ".venv-peers" / "streaming"
COLUMNS = {"jpg": "bytes", "txt": "str", "json": "json"}  # raw bytes: the decode is ours, as in the peer row


def _tar_samples(path: str):
    """One shard's samples as {ext: bytes}, in file order (a sample's members are adjacent)."""
    sample, key = {}, None
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            k, ext = member.name.split(".", 1)
            if k != key and sample:
                yield sample
                sample = {}
            key, sample[ext] = k, tar.extractfile(member).read()
    if sample:
        yield sample


def write_mds(shards: str, out: str) -> int:
    from streaming import MDSWriter

    tars = sorted(os.path.join(shards, n) for n in os.listdir(shards) if n.endswith(".tar"))
    n = 0
    # size_limit = the largest tar: as many MDS shards as tars (6 of 50 samples), not one 64 MiB shard
    with MDSWriter(out=out, columns=COLUMNS, size_limit=max(map(os.path.getsize, tars))) as writer:
        for tar in tars:
            for s in _tar_samples(tar):
                writer.write({"jpg": s["jpg"], "txt": s["txt"].decode("utf-8"), "json": json.loads(s["json"])})
                n += 1
    return n


def child_streaming(mds: str, epochs: int) -> dict:
    import open_clip
    import PIL.Image
    from streaming import StreamingDataLoader, StreamingDataset

    preprocess = open_clip.image_transform(IMAGE_SIZE, is_train=True)
    tokenizer = open_clip.get_tokenizer(MODEL)

    class Pairs(StreamingDataset):
        def __getitem__(self, i):
            s = super().__getitem__(i)  # MDS decoded: jpg bytes, txt str, json dict
            with io.BytesIO(s["jpg"]) as stream:  # webdataset 0.2.86's ImageHandler("pilrgb"), line for line
                img = PIL.Image.open(stream)
                img.load()
                img = img.convert("RGB")
            return preprocess(img), tokenizer(s["txt"])[0]

    dataset = Pairs(local=mds, shuffle=True, shuffle_seed=0, batch_size=BATCH)
    loader = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=1, persistent_workers=True)

    def run_epoch(_):
        n = 0
        for images, texts in loader:
            assert images.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype.is_floating_point
            n += len(images)
        return n
    return measure(epochs, run_epoch)


if __name__ == "__main__":
    mode, a, b = sys.argv[1:4]
    print(json.dumps(write_mds(a, b) if mode == "--write" else child_streaming(a, int(b))))
