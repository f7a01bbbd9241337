"""The fast JPEG path (simplejpeg + OpenCV) against the naive Pillow reference: equal sizes, near-equal pixels;
resize modes and encode formats."""
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from clipforge.data_pipeline.convert.images import process_image, target_size
from clipforge.data_pipeline.convert.options import ConvertOptions

from .convert_inputs import jpeg

MODES = ("keep_ratio", "center_crop", "none")


def pillow_reference(data: bytes, options: ConvertOptions) -> np.ndarray:
    """The naive converter: Pillow decode, EXIF transpose, RGB, antialiased bicubic resize, crop, JPEG, decode."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    width, height = target_size(*image.size, options)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    if options.resize_mode == "center_crop":
        left, top = (width - options.image_size) // 2, (height - options.image_size) // 2
        image = image.crop((left, top, left + options.image_size, top + options.image_size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=options.quality)
    return np.asarray(Image.open(buffer)).astype(int)


def assert_parity(data: bytes, options: ConvertOptions) -> None:
    processed = process_image(data, options)
    ours = np.asarray(Image.open(io.BytesIO(processed.data))).astype(int)
    reference = pillow_reference(data, options)
    assert ours.shape == reference.shape  # exact on sizes
    assert (processed.width, processed.height) == (ours.shape[1], ours.shape[0])
    difference = np.abs(ours - reference)
    # Area vs antialiased-bicubic filtering plus two JPEG round trips: measured mean 1-2.5 on Flickr photos.
    assert difference.mean() < 3.0, difference.mean()
    assert np.percentile(difference, 99) < 30


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (1200, 900), (100, 60)])
def test_fast_path_matches_pillow_reference_on_synthetic_photos(mode, size):
    options = ConvertOptions(image_size=128, resize_mode=mode)
    assert_parity(jpeg(*size, seed=size[0]), options)


@pytest.mark.flickr8k
def test_fast_path_matches_pillow_reference_on_real_photos(flickr8k_dir):
    names = sorted((flickr8k_dir / "originals").glob("*.jpg"))[:12]
    for index, path in enumerate(names):
        assert_parity(path.read_bytes(), ConvertOptions(resize_mode=MODES[index % 3]))
    for path in names[:3]:  # enlarged 4x: the reduced (DCT-domain) decode applies
        image = Image.open(path)
        buffer = io.BytesIO()
        image.resize((image.width * 4, image.height * 4), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=95)
        assert_parity(buffer.getvalue(), ConvertOptions())


def test_sizes_follow_the_resize_mode():
    data = jpeg(500, 375, seed=1)
    sizes = {mode: process_image(data, ConvertOptions(image_size=256, resize_mode=mode)) for mode in MODES}
    assert [(p.width, p.height) for p in sizes.values()] == [(341, 256), (256, 256), (500, 375)]
    assert all((p.original_width, p.original_height) == (500, 375) for p in sizes.values())
    small = process_image(jpeg(100, 60, seed=2), ConvertOptions(image_size=256))
    assert (small.width, small.height) == (427, 256)  # enlarged like img2dataset's keep_ratio


def test_large_originals_use_the_reduced_decode_without_changing_the_size():
    # 2001x1500 decodes in the DCT domain at 1/4 scale (501x375); the output size still comes from the original.
    data = jpeg(2001, 1500, seed=3)
    processed = process_image(data, ConvertOptions(image_size=128))
    assert (processed.width, processed.height) == target_size(2001, 1500, ConvertOptions(image_size=128)) == (171, 128)
    assert_parity(data, ConvertOptions(image_size=128))


@pytest.mark.parametrize("fmt,magic", [("jpg", b"\xff\xd8"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_encode_formats(fmt, magic):
    processed = process_image(jpeg(80, 60, seed=4), ConvertOptions(image_size=32, encode_format=fmt, quality=90))
    assert processed.data.startswith(magic)
    assert Image.open(io.BytesIO(processed.data)).size == (43, 32)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_header_scan_reads_the_same_orientation_as_pillow(orientation):
    from clipforge.data_pipeline.convert.jpeg_header import jpeg_orientation
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "camera maker"  # another tag before it, as real cameras write
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(buffer, format="JPEG", exif=exif.tobytes())
    data = buffer.getvalue()
    assert jpeg_orientation(data) == Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation
    rotated = process_image(data, ConvertOptions(image_size=8, resize_mode="none"))
    assert (rotated.width, rotated.height) == ((8, 16) if orientation >= 5 else (16, 8))


@pytest.mark.parametrize("size,box", [((100, 63), (0, 23, 128, 81)), ((63, 100), (23, 0, 81, 128)),
                                      ((500, 375), (0, 16, 128, 96))])
def test_border_mode_pads_the_resized_image_to_a_white_square(size, box):
    # img2dataset's border: the longer side becomes image_size, the rest is white, the image centred (the odd
    # pixel of padding at the bottom/right); PNG output so every padding pixel can be checked exactly.
    left, top, width, height = box
    data = jpeg(*size, seed=5)
    processed = process_image(data, ConvertOptions(image_size=128, resize_mode="border", encode_format="png"))
    assert (processed.width, processed.height, processed.original_width, processed.original_height) == (128, 128, *size)
    pixels = np.asarray(Image.open(io.BytesIO(processed.data))).astype(int)
    inside = np.zeros(pixels.shape[:2], bool)
    inside[top:top + height, left:left + width] = True
    assert (pixels[~inside] == 255).all()
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((width, height),
                                                                             Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(pixels[top:top + height, left:left + width] - reference).mean() < 3.0
    # The image reaches the padding on both sides: no row or column of it was lost to the border.
    assert (pixels[top, left:left + width] != 255).any() and (pixels[top + height - 1, left:left + width] != 255).any()
    assert (pixels[top:top + height, left] != 255).any() and (pixels[top:top + height, left + width - 1] != 255).any()
