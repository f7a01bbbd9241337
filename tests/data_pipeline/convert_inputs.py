"""Real raw inputs for the converter tests: JPEG/PNG files of every awkward kind, caption tables, annotation json.

Each helper writes files into a tmp folder and returns their paths; nothing here is a mock.
"""
import csv
import io
import json
import os
import tarfile

import numpy as np
from PIL import Image


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth, photo-like RGB image (gradients + blobs): resize/encode errors show up as pixel differences."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 6, 2).tolist() + [rng.uniform(0, 6.28)]
        channels.append(127 + 120 * np.sin(x / width * fx * 3.14 + phase) * np.cos(y / height * fy * 3.14))
    return np.clip(np.stack(channels, axis=2), 0, 255).astype(np.uint8)


def jpeg(width: int, height: int, seed: int, quality: int = 92, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo(width, height, seed)).save(buffer, format="JPEG", quality=quality, **save)
    return buffer.getvalue()


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return str(path)


def write_csv(path, rows, header=("image", "caption"), delimiter=",") -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def caption_table(folder, count: int, captions_per_image: int = 1, size=(64, 48)) -> str:
    """folder/images/img{i}.jpg + folder/captions.csv with `captions_per_image` rows per image."""
    rows = []
    for i in range(count):
        write(os.path.join(folder, "images", f"img{i}.jpg"), jpeg(size[0], size[1], seed=i))
        rows += [(f"images/img{i}.jpg", f"caption {j} of image {i}") for j in range(captions_per_image)]
    return write_csv(os.path.join(folder, "captions.csv"), rows)


def read_shards(out_dir) -> dict:
    """{key: {extension: bytes}} over every shard tar in out_dir, checking members of a key are adjacent."""
    samples, order = {}, []
    for name in sorted(os.listdir(out_dir)):
        if name.startswith("shard-") and name.endswith(".tar"):
            with tarfile.open(os.path.join(out_dir, name)) as tar:
                for member in tar.getmembers():
                    key, extension = member.name.split(".", 1)
                    if not order or order[-1] != key:
                        assert key not in samples, f"members of {key} are not adjacent in {name}"
                        order.append(key)
                    samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png16_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), built from its chunks."""
    import struct
    import zlib
    height, width, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _cut(data: bytes) -> bytes:
    return data[: len(data) * 3 // 4]  # header intact, scan data cut short


def awkward_images(folder) -> dict:
    """{file name: bytes} of every awkward image kind the converter must handle or reject (64x48 unless noted)."""
    good = jpeg(64, 48, seed=1)
    rgb = Image.fromarray(photo(64, 48, seed=2))
    buffer = io.BytesIO()
    rgb.convert("CMYK").save(buffer, format="JPEG", quality=95)
    cmyk = buffer.getvalue()
    gray16 = Image.fromarray(np.full((48, 64), 0x8000, dtype=np.uint16))  # mode I;16: mid grey
    rgba = np.dstack([photo(64, 48, seed=3), np.full((48, 64), 255, np.uint8)])
    rgba[:, :32, 3] = 0  # left half fully transparent: must come out white
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64x48, displayed rotated by 90 degrees: 48x64
    buffer = io.BytesIO()
    Image.fromarray(photo(64, 48, seed=4)).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    rgb16 = np.zeros((48, 64, 3), np.uint16)
    rgb16[...] = (0xF000, 0x8000, 0x1000)
    return {
        "rgb16.png": _png16_rgb(rgb16),
        "good.jpg": good, "duplicate.jpg": good, "truncated.jpg": _cut(jpeg(64, 48, seed=5)), "zero.jpg": b"",
        "not_an_image.jpg": b"this is a text file that pretends to be a JPEG\n" * 4, "cmyk.jpg": cmyk,
        "gray16.png": _png(gray16), "rgba.png": _png(Image.fromarray(rgba, "RGBA")), "palette.png": _png(palette),
        "exif_rotated.jpg": buffer.getvalue(), "huge.png": _png(Image.fromarray(photo(200, 200, seed=6))),
    }
