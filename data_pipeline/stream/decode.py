"""Fast image path of the train loader: bytes -> uint8 [3, S, S], open_clip's train augmentation.

Measured on this machine (docs/loader.md, ../shared/notes/fast-images.md): on 256-px shard JPEGs
the resize, not the decode, is the cost; Pillow's antialiased bicubic is ~1.7 ms of PIL's 2.5 ms
per image, simplejpeg (libjpeg-turbo) + OpenCV is ~0.65 ms. So:
  1. simplejpeg decodes straight to RGB, at 1/2, 1/4 or 1/8 scale (DCT-domain, most decode work
     skipped) when the image is much larger than needed; other formats go through Pillow.
  2. The crop box is chosen as torchvision's RandomResizedCrop does (scale (0.9, 1.0) = open_clip's
     default train scale, ratio (3/4, 4/3)), from a per-sample seeded RNG, on the decoded image.
  3. One OpenCV resize of the crop (a view, no copy) to S x S: bilinear for mild scales, area
     averaging when it shrinks by more than 4/3 (OpenCV has no antialiased bicubic; Pillow has).
The result stays uint8; normalisation by the model's mean/std happens on the device (4x less to copy).
"""
import io
import math

import cv2
import numpy as np
import simplejpeg
from PIL import Image

TRAIN_SCALE = (0.9, 1.0)  # open_clip AugmentationCfg().scale
TRAIN_RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop default
# Parallelism is the loader's worker processes; OpenCV's own thread pool would oversubscribe the cores.
cv2.setNumThreads(1)


class DecodeError(ValueError):
    """The bytes are not a decodable image."""


def reduced_scale(height: int, width: int, min_short_side: int) -> dict:
    """simplejpeg's keywords for a height x width JPEG: the smallest libjpeg scale that keeps the shorter side
    >= min_short_side when that is under 1/2 of it ({} = decode at full size)."""
    scale = min_short_side / max(1, min(height, width))
    if not min_short_side or scale >= 0.5:
        return {}
    return {"min_height": math.ceil(height * scale), "min_width": math.ceil(width * scale)}


def decode_rgb(data: bytes, ext: str, min_short_side: int = 0) -> np.ndarray:
    """HxWx3 uint8 RGB; JPEGs decoded at the smallest libjpeg scale that keeps the shorter side >= min_short_side."""
    if ext in ("jpg", "jpeg"):
        try:
            kwargs = reduced_scale(*simplejpeg.decode_jpeg_header(data)[:2], min_short_side) if min_short_side else {}
            return simplejpeg.decode_jpeg(data, colorspace="RGB", **kwargs)
        except ValueError:
            pass  # e.g. CMYK or an unusual JPEG: let Pillow try before calling it corrupt
    try:
        with Image.open(io.BytesIO(data)) as im:
            if min_short_side and im.format == "JPEG":
                im.draft("RGB", (min_short_side, min_short_side))
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ...)
        raise DecodeError(f"{type(e).__name__}: {e}") from None


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=TRAIN_SCALE, ratio=TRAIN_RATIO):
    """(top, left, crop_h, crop_w) by torchvision's RandomResizedCrop.get_params algorithm."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback to a central crop at the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_crop(image: np.ndarray, box, size: int) -> np.ndarray:
    """Resize image[top:top+h, left:left+w] to size x size (HxWx3 uint8)."""
    top, left, h, w = box
    crop = image[top:top + h, left:left + w]
    # Against open_clip's Pillow bicubic (antialiased) on Flickr8k crops, mean |diff| in grey levels:
    # 256 -> 224 crops: linear 1.5, area 1.3, cubic 2.1 (linear is 2x faster than area here);
    # 256 -> 64: area 2.1, linear 9.0, cubic 11.0 (no antialias filter). So area only for real shrinks.
    shrink = size / min(h, w)
    interpolation = cv2.INTER_AREA if shrink < 0.75 else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)


def min_decode_side(size: int, scale=TRAIN_SCALE) -> int:
    """The smallest decoded shorter side that still gives every train crop >= size pixels: a crop's
    shorter side is at least sqrt(scale_min * 3/4) of the image's (0.82 at open_clip's 0.9; 0.61 at 0.5),
    rounded down to a tenth for margin, so reduced-scale JPEG decoding never upsamples a crop."""
    fraction = math.floor(10 * math.sqrt(scale[0] * TRAIN_RATIO[0])) / 10
    return math.ceil(size / fraction)


def train_image(data: bytes, ext: str, size: int, rng: np.random.Generator, scale=TRAIN_SCALE,
                hflip: bool = False) -> np.ndarray:
    """Encoded image -> uint8 [3, size, size], open_clip's train crop (area `scale`) with this sample's
    RNG; hflip: mirrored with probability 1/2 (drawn after the crop, so the crops are those without it)."""
    image = decode_rgb(data, ext, min_short_side=min_decode_side(size, scale))
    box = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale=scale)
    out = resize_crop(image, box, size)
    if hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out.transpose(2, 0, 1))
