"""JPEGs with what decoders and resize kernels differ on (gradients, sharp edges, stripes, noise), a one-shard
dataset of them, and the device path run beside the CPU path: for the data.decode=gpu tests
(tests/data_pipeline/test_stream_device_decode.py, tests/pretrain/test_device_decode_train.py, tests/gpu/)."""
import io
import json
import os

import numpy as np
from PIL import Image


def photo_jpeg(seed: int, height: int, width: int, mode: str = "RGB", quality: int = 90) -> bytes:
    """A height x width JPEG (Pillow, 4:2:0 below quality 95): a smooth gradient, stripes at a random pitch, six
    rectangles of solid colour and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = 255 * np.stack([x, y, 1 - x * y], -1) * rng.uniform(0.4, 1.0, 3)
    image += 40 * np.sin(x * rng.uniform(20, 80))[..., None]
    for _ in range(6):
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        image[top:top + rng.integers(4, height // 2), left:left + rng.integers(4, width // 2)] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_of(data: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, format="PNG")
    return buf.getvalue()


def corrupt_body(data: bytes) -> bytes:
    """The JPEG with an unknown marker (0xFF50) mid-scan: its header reads and it ends with EOI, but libjpeg
    (torchvision, Pillow, simplejpeg) refuses to decode it."""
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    return data[:middle] + b"\xff\x50" + data[middle + 2:]


def write_shards(out_dir, samples) -> str:
    """One shard of (key, image bytes, ext) samples, each with two captions, and its sizes.json -> out_dir."""
    import webdataset as wds
    os.makedirs(out_dir, exist_ok=True)
    with wds.TarWriter(os.path.join(out_dir, "shard-000000.tar")) as sink:
        for key, data, ext in samples:
            sink.write({"__key__": key, ext: data, "txt": f"a photo {key}\nanother photo {key}"})
    with open(os.path.join(out_dir, "sizes.json"), "w") as f:
        json.dump({"shard-000000.tar": len(samples)}, f)
    return str(out_dir)


def both_paths(datas, size, scale=(0.9, 1.0), hflip=False, device="cpu"):
    """(the device path's uint8 [n, 3, S, S], moved to the CPU; the CPU path's; the plans) of JPEG bytes `datas`,
    sample i drawing from the RNG of position i in both (as the loader keys it)."""
    import torch

    from clipforge.data_pipeline.stream import hashing
    from clipforge.data_pipeline.stream.decode import train_image
    from clipforge.data_pipeline.stream.device_decode import ImageRows, decode_on_device, plan_image

    rows, reference, plans = ImageRows(len(datas), size, "gpu"), [], []
    for position, data in enumerate(datas):
        reference.append(train_image(data, "jpg", size, hashing.rng(7, hashing.SAMPLE_AUGMENT, position), scale, hflip))
        plans.append(plan_image(data, "jpg", size, hashing.rng(7, hashing.SAMPLE_AUGMENT, position), scale, hflip))
        rows.add(plans[-1])
    batch = {"caption_index": torch.zeros(len(datas), 1, dtype=torch.int64), **rows.fields()}
    decoded, dropped = decode_on_device(batch, device)
    assert dropped == 0 and decoded["images"].device.type == torch.device(device).type
    return decoded["images"].cpu(), torch.from_numpy(np.stack(reference)), plans


def grey_level_diff(a, b) -> np.ndarray:
    """|a - b| of two uint8 image tensors, in grey levels."""
    return (a.int() - b.int()).abs().numpy()
