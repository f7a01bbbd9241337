"""One image: source bytes -> RGB, resized, encoded.

Fast path (plain RGB/gray JPEG without EXIF rotation, ~all web photos): libjpeg-turbo decode (simplejpeg), OpenCV
resize, simplejpeg encode — 281 vs 213 img/s/core for Pillow on ~500x375 photos (../shared/notes/fast-images.md).
Everything else (EXIF orientation, CMYK, 16-bit, palette, alpha, PNG/WebP/GIF/...) decodes through Pillow into the
same RGB uint8 array; resize and encode are shared, so both paths give the same sizes and near-equal pixels.
"""
import io
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from .jpeg_header import jpeg_orientation
from .options import ConvertOptions

# Parallelism comes from worker processes (--workers); OpenCV's own threads would oversubscribe the cores.
cv2.setNumThreads(1)
# Our own --max-pixels check runs on the header before any decode; Pillow's second guard would only duplicate it.
Image.MAX_IMAGE_PIXELS = None
EXIF_ORIENTATION = 0x0112
# Orientations 5..8 rotate by 90/270 degrees: the displayed width is the stored height.
TRANSPOSED = (5, 6, 7, 8)


class ItemError(Exception):
    def __init__(self, status: str, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.status, self.reason, self.detail = status, reason, detail

    def __reduce__(self):  # a download's error travels from the parent's prefetch threads to a worker process
        return ItemError, (self.status, self.reason, self.detail)


@dataclass
class Processed:
    data: bytes
    width: int
    height: int
    original_width: int
    original_height: int


# img2dataset's border mode pads with white (its PadIfNeeded value [255, 255, 255]): the same pixels as its shards.
BORDER_COLOR = (255, 255, 255)


def target_size(width: int, height: int, options: ConvertOptions) -> Tuple[int, int]:
    """Size before any crop or pad: the shorter side becomes image_size (img2dataset's keep_ratio / center_crop),
    or the longer side for border (img2dataset's LongestMaxSize, then a pad to a square)."""
    if options.resize_mode == "none":
        return width, height
    size = options.image_size
    # The side that becomes image_size: the shorter one, or the longer one for border.
    width_fixed = (width <= height) != (options.resize_mode == "border")
    if width_fixed:
        return size, max(1, round(height * size / width))
    return max(1, round(width * size / height)), size


def _check_filters(width: int, height: int, options: ConvertOptions) -> None:
    if width * height > options.max_pixels:
        raise ItemError("filtered", "over --max-pixels", f"{width}x{height} = {width * height} px > {options.max_pixels}")
    if options.min_size and min(width, height) < options.min_size:
        raise ItemError("filtered", "under --min-size", f"{width}x{height}, shorter side < {options.min_size}")
    if options.max_aspect_ratio and max(width, height) / min(width, height) > options.max_aspect_ratio:
        raise ItemError("filtered", "over --max-aspect-ratio",
                        f"{width}x{height}, ratio {max(width, height) / min(width, height):.2f} > {options.max_aspect_ratio}")


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8; transparency is composited on white, 16-bit keeps its top 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"))


def _reduced_decode_ok(width: int, height: int, want_w: int, want_h: int) -> bool:
    """libjpeg's DCT-domain downscale (decode at 1/2, 1/4, 1/8) from 4x the target on: measured on Flickr photos
    enlarged 4x, 11 vs 26 ms per image and mean |difference| to Pillow's antialiased reference 1.7 (full decode:
    1.0). At 2x it differs by 3.1 (it aliases) and at 3/4 or 5/8 scale it is not faster, so below 4x: full decode."""
    return width >= 4 * want_w and height >= 4 * want_h


def _fast_jpeg(data: bytes, options: ConvertOptions):
    """Plain RGB/gray JPEG without EXIF rotation -> (RGB array, width, height); None when the Pillow path must run
    (other format, CMYK/YCCK, rotated, or a header this scan cannot read: Pillow then names the problem)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray", "RGB") or jpeg_orientation(data) != 1:
            return None
    except ValueError:
        return None
    _check_filters(width, height, options)
    want_w, want_h = target_size(width, height, options)
    big = _reduced_decode_ok(width, height, want_w, want_h)
    try:
        array = simplejpeg.decode_jpeg(data, "RGB", min_height=want_h if big else 0, min_width=want_w if big else 0,
                                       strict=True)
    except ValueError as error:  # truncated / corrupt scan data
        raise ItemError("failed_to_decode", "corrupt image data", f"ValueError: {error}")
    return array, width, height


def _decode(data: bytes, options: ConvertOptions) -> Tuple[np.ndarray, int, int]:
    """-> (RGB array at >= target size, displayed width, displayed height)."""
    fast = _fast_jpeg(data, options)
    if fast is not None:
        return fast
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ItemError("failed_to_decode", "not an image", f"{len(data)} bytes in no known image format")
    except Exception as error:  # Pillow raises many types on broken headers
        raise ItemError("failed_to_decode", "bad image header", str(error))
    orientation = image.getexif().get(EXIF_ORIENTATION, 1) if image.format in ("JPEG", "PNG", "WEBP", "TIFF") else 1
    width, height = image.size
    if orientation in TRANSPOSED:
        width, height = height, width
    _check_filters(width, height, options)
    want_w, want_h = target_size(width, height, options)
    try:
        if image.format == "JPEG" and _reduced_decode_ok(width, height, want_w, want_h):
            stored = (want_h, want_w) if orientation in TRANSPOSED else (want_w, want_h)
            image.draft(image.mode, stored)
        image.load()
        image = ImageOps.exif_transpose(image) if orientation not in (1, None) else image
        return _to_rgb(image), width, height
    except Exception as error:  # truncated / corrupt data: OSError, ValueError, SyntaxError from the codecs
        raise ItemError("failed_to_decode", "corrupt image data", f"{type(error).__name__}: {error}")


def resize(array: np.ndarray, want_w: int, want_h: int, options: ConvertOptions) -> np.ndarray:
    """want_* come from the ORIGINAL size: a DCT-downscaled decode must not change the output size by rounding."""
    height, width = array.shape[:2]
    if (want_w, want_h) != (width, height):
        # Area averaging when shrinking (no aliasing); bicubic when enlarging (area would be nearest-neighbour).
        shrink = want_w * want_h < width * height
        array = cv2.resize(array, (want_w, want_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if options.resize_mode == "center_crop":
        size = options.image_size
        top, left = (want_h - size) // 2, (want_w - size) // 2
        array = array[top:top + size, left:left + size]
    elif options.resize_mode == "border":
        # Centred, the odd pixel of padding at the bottom/right (as albumentations' PadIfNeeded places it).
        size = options.image_size
        top, left = (size - want_h) // 2, (size - want_w) // 2
        array = cv2.copyMakeBorder(array, top, size - want_h - top, left, size - want_w - left,
                                   cv2.BORDER_CONSTANT, value=BORDER_COLOR)
    return np.ascontiguousarray(array)


def encode(array: np.ndarray, options: ConvertOptions) -> bytes:
    if options.encode_format == "jpg":
        return simplejpeg.encode_jpeg(array, quality=options.quality, colorspace="RGB", colorsubsampling="420")
    bgr = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if options.encode_format == "webp":
        ok, buffer = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, options.quality])
    else:
        ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise ItemError("failed_to_resize", "encode failed", f"OpenCV could not encode {options.encode_format}")
    return buffer.tobytes()


def process_image(data: bytes, options: ConvertOptions) -> Processed:
    array, original_width, original_height = _decode(data, options)
    want_w, want_h = target_size(original_width, original_height, options)
    try:
        array = resize(array, want_w, want_h, options)
    except Exception as error:
        raise ItemError("failed_to_resize", "resize failed", f"{type(error).__name__}: {error}")
    height, width = array.shape[:2]
    return Processed(encode(array, options), width, height, original_width, original_height)
