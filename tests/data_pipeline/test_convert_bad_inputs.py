"""Every bad input of the issue's list is written or rejected with its reason; counts always add up."""
import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipforge.data_pipeline.convert import convert

from .convert_inputs import awkward_images, read_json, read_shards, write

# (image, caption bytes, expected status, words in the error message)
CASES = [
    ("good.jpg", b"a good photo", "success", ""),
    ("duplicate.jpg", b"the same photo again", "duplicate", "same bytes as an earlier item"),
    ("truncated.jpg", b"cut short", "failed_to_decode", "corrupt image data"),
    ("zero.jpg", b"nothing inside", "failed_to_read", "empty file"),
    ("not_an_image.jpg", b"text in disguise", "failed_to_decode", "not an image"),
    ("missing.jpg", b"never existed", "failed_to_read", "file not found"),
    ("cmyk.jpg", b"printer colours", "success", ""),
    ("gray16.png", b"sixteen bits", "success", ""),
    ("rgb16.png", b"48-bit colour", "success", ""),
    ("rgba.png", b"half transparent", "success", ""),
    ("palette.png", b"sixteen colours", "success", ""),
    ("exif_rotated.jpg", b"shot sideways", "success", ""),
    ("huge.png", b"too many pixels", "filtered", "over --max-pixels"),
    ("good.jpg", b"", "empty_caption", "every sample needs at least one caption"),
    ("cmyk.jpg", b"  \t ", "empty_caption", "every sample needs at least one caption"),
    ("rgba.png", b"caf\xe9 latin-1", "invalid_caption", "not UTF-8"),
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    for name, data in awkward_images(root).items():
        write(root / "images" / name, data)
    # One row per case; repeated images get their own copy so each row is its own input item.
    lines = [b"image,caption"]
    for number, (name, caption, _, _) in enumerate(CASES):
        target = f"images/{number:02d}_{name}"
        if os.path.exists(root / "images" / name):
            write(root / target, (root / "images" / name).read_bytes())
        lines.append(target.encode() + b"," + caption)
    write(root / "captions.csv", b"\n".join(lines) + b"\n")
    out = root / "out"
    summary = convert([str(root / "captions.csv")], str(out), image_size=32, max_pixels=100 * 100, dedup=True,
                      samples_per_shard=4, progress=False)
    rows = [row for path in sorted(out.glob("shard-*.parquet")) for row in pq.read_table(path).to_pylist()]
    return summary, rows, read_shards(out), out


def test_every_input_item_is_written_or_rejected_with_its_reason(converted):
    summary, rows, samples, out = converted
    assert len(rows) == len(CASES) == summary["input_items"]
    assert summary["written"] + sum(summary["rejected"].values()) == len(CASES)
    for row, (name, _, status, words) in zip(rows, CASES):
        assert row["source"].endswith(name), row
        assert row["status"] == status, (name, row["error_message"])
        if status == "success":
            assert row["error_message"] == "" and row["key"] in samples
        else:
            assert words in row["error_message"], (name, row["error_message"])
            assert row["key"] not in samples
    manifest = read_json(out / "manifest.json")
    assert sum(manifest["counts"].values()) == manifest["input_items"] == len(CASES)
    assert manifest["num_samples"] == len(samples) == sum(status == "success" for _, _, status, _ in CASES)


def test_non_utf8_caption_is_kept_visibly_in_the_parquet(converted):
    row = next(r for r in converted[1] if r["status"] == "invalid_caption")
    assert "\\udce9" in row["caption"] and "b'caf\\xe9 latin-1'" in row["error_message"]


def _decoded(samples, rows, name) -> np.ndarray:
    key = next(r["key"] for r in rows if r["source"].endswith(name) and r["status"] == "success")
    return np.asarray(Image.open(io.BytesIO(samples[key]["jpg"])))


def test_awkward_images_come_out_as_rgb_with_the_right_content(converted):
    _, rows, samples, _ = converted
    rotated = _decoded(samples, rows, "exif_rotated.jpg")
    assert rotated.shape == (43, 32, 3)  # displayed 48x64 (portrait): shorter side 32
    gray = _decoded(samples, rows, "gray16.png")
    assert gray.shape == (32, 43, 3) and abs(float(gray.mean()) - 128) < 2  # 0x8000 -> 128
    rgb16 = _decoded(samples, rows, "rgb16.png").reshape(-1, 3).mean(axis=0)
    assert np.abs(rgb16 - (240, 128, 16)).max() < 3  # top 8 bits of each 16-bit channel
    rgba = _decoded(samples, rows, "rgba.png")
    assert rgba[:, :18].min() > 245  # transparent half composited on white
    cmyk = _decoded(samples, rows, "cmyk.jpg").astype(int)
    assert cmyk.shape == (32, 43, 3)
    for row in rows:
        if row["status"] == "success":
            meta = json.loads(samples[row["key"]]["json"])
            assert min(meta["width"], meta["height"]) == 32 and meta["sha256"] == row["sha256"]


def test_cmyk_jpeg_keeps_its_colours(tmp_path):
    from .convert_inputs import photo
    pixels = photo(64, 48, seed=2)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buffer, format="JPEG", quality=98)
    write(tmp_path / "c.jpg", buffer.getvalue())
    write(tmp_path / "c.txt", b"cmyk")
    convert([str(tmp_path)], str(tmp_path / "out"), resize_mode="none", progress=False)
    (sample,) = read_shards(tmp_path / "out").values()
    out = np.asarray(Image.open(io.BytesIO(sample["jpg"]))).astype(int)
    assert np.abs(out - pixels.astype(int)).mean() < 4  # not inverted, not shifted
