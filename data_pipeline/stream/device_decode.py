"""data.decode=gpu: a train batch's JPEGs decoded, cropped, resized and flipped on the training device.

The CPU path (decode.py's train_image) runs whole in a loader worker: ~1 ms of a core per 224-px crop
(docs/loader.md), so on a GPU node the cores per GPU bound the samples/s. Here the work is split where the
randomness ends:
  worker (plan_image): reads the JPEG's header (a few us) and draws the sample's crop box and flip exactly as
         train_image does -- the same RNG (hashing.SAMPLE_AUGMENT, keyed by position), the same draws in the same
         order, on the same grid: the size the CPU path decodes at (libjpeg's DCT-domain M/8 scale when the image
         is over 2x what the crop needs, decode.reduced_scale). It ships the bytes, box, grid and flip.
  device (decode_on_device): one batched torchvision.io.decode_jpeg (nvjpeg on CUDA) at full size, each box
         mapped from its grid onto the full image, one bilinear resize per crop (antialiased where it shrinks by
         more than 4/3, where the CPU path averages areas), the flips, rounded to uint8 as the CPU path rounds.
         Normalisation stays the trainer's (modeling/preprocess.py images_to_input), on the same device.
What the device is not given, the worker decodes by the CPU path itself (same pixels as data.decode=cpu):
non-JPEG images, JPEGs whose header libjpeg-turbo does not read or whose colour space is not YCbCr or grey
(CMYK, YCCK, RGB-coded), and files that do not end with the EOI marker (cut short: skipped as corrupt_image).
A JPEG that passes those checks but that no decoder reads (on CUDA: neither nvjpeg nor libjpeg-turbo on the CPU)
is dropped from the batch with its captions and counted as corrupt_image, as the CPU path skips it.
"""
import dataclasses
import functools
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from clipforge.data_pipeline.stream.decode import (TRAIN_SCALE, min_decode_side, random_resized_crop_box,
                                                   reduced_scale, train_image)

ENCODED = "encoded_images"  # a data.decode=gpu batch's images, until decode_on_device replaces them by "images"
DEVICE_COLORSPACES = ("YCbCr", "Gray")  # what simplejpeg's header reader calls the spaces nvjpeg decodes to RGB
EOI = b"\xff\xd9"
AREA_SHRINK = 0.75  # decode.resize_crop's switch from bilinear to area averaging (size / crop side)


@dataclass
class CropPlan:
    """One sample's image for the device: its JPEG bytes, the crop box (top, left, h, w) on the grid (height,
    width) the CPU path decodes it at, and whether it is mirrored."""
    data: bytes
    box: Tuple[int, int, int, int]
    grid: Tuple[int, int]
    flip: bool


def device_grid(data: bytes, ext: str, min_short_side: int) -> Optional[Tuple[int, int]]:
    """(height, width) that decode.decode_rgb decodes this JPEG at, or None when the device is not given it."""
    if ext not in ("jpg", "jpeg") or not data.endswith(EOI):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in DEVICE_COLORSPACES:
            return None
        scaled = reduced_scale(height, width, min_short_side)
        return tuple(simplejpeg.decode_jpeg_header(data, **scaled)[:2]) if scaled else (height, width)
    except ValueError:  # not a header libjpeg-turbo reads: the CPU path decides (Pillow, or corrupt_image)
        return None


def plan_image(data: bytes, ext: str, size: int, rng: np.random.Generator, scale=TRAIN_SCALE,
               hflip: bool = False) -> Union[CropPlan, np.ndarray]:
    """train_image's choices for the device: a CropPlan, or train_image's own uint8 [3, size, size] for an
    image the device is not given. Draws from rng exactly what train_image draws (box, then the flip)."""
    grid = device_grid(data, ext, min_decode_side(size, scale))
    if grid is None:
        return train_image(data, ext, size, rng, scale, hflip)
    box = random_resized_crop_box(grid[0], grid[1], rng, scale=scale)
    return CropPlan(data, box, grid, bool(hflip and rng.random() < 0.5))


@dataclass
class EncodedImages:
    """A batch's n images before decode_on_device. `encoded` bool [n] marks the m rows the device decodes, in
    order: their JPEGs concatenated in `data` uint8 [sum of lengths] (`lengths` int64 [m]), crop boxes int64
    [m, 4] on grids int64 [m, 2], `flips` bool [m]. The other rows, in order, are the worker's CPU-path pixels
    `pixels` uint8 [n - m, 3, S, S] (S, the crop size, is read from its shape, also when n - m = 0)."""
    encoded: torch.Tensor
    data: torch.Tensor
    lengths: torch.Tensor
    boxes: torch.Tensor
    grids: torch.Tensor
    flips: torch.Tensor
    pixels: torch.Tensor

    def pin_memory(self) -> "EncodedImages":
        """DataLoader(pin_memory=True): only the pixels are copied to the device; the JPEG bytes are read on the
        host (decode_jpeg takes them on the CPU whatever the device)."""
        return dataclasses.replace(self, pixels=self.pixels.pin_memory())


class ImageRows:
    """A loader worker's images of one batch, row by row: uint8 [3, S, S] pixels, or CropPlans (data.decode=gpu).
    fields() -> {"images": uint8 [n, 3, S, S]} (cpu) or {ENCODED: EncodedImages} (gpu)."""

    def __init__(self, capacity: int, size: int, decode: str):
        self.on_device = decode == "gpu"
        self.pixels = np.empty((capacity, 3, size, size), dtype=np.uint8)
        self.decoded = 0  # rows in self.pixels
        self.plans: List[CropPlan] = []
        self.encoded: List[bool] = []

    def add(self, image: Union[CropPlan, np.ndarray]) -> None:
        if isinstance(image, CropPlan):
            self.plans.append(image)
        else:
            self.pixels[self.decoded] = image
            self.decoded += 1
        self.encoded.append(isinstance(image, CropPlan))

    def fields(self) -> Dict[str, object]:
        pixels = torch.from_numpy(self.pixels[:self.decoded])
        if not self.on_device:
            return {"images": pixels}
        plans = self.plans
        data = np.frombuffer(bytearray(b"".join(p.data for p in plans)), dtype=np.uint8)
        return {ENCODED: EncodedImages(
            encoded=torch.tensor(self.encoded, dtype=torch.bool), data=torch.from_numpy(data),
            lengths=torch.tensor([len(p.data) for p in plans], dtype=torch.int64),
            boxes=torch.tensor([p.box for p in plans], dtype=torch.int64).view(-1, 4),
            grids=torch.tensor([p.grid for p in plans], dtype=torch.int64).view(-1, 2),
            flips=torch.tensor([p.flip for p in plans], dtype=torch.bool), pixels=pixels)}


def _decode(data, device: torch.device):
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec (not a dependency here); they work.
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _decode_alone(jpeg: torch.Tensor, device: torch.device) -> Optional[torch.Tensor]:
    """One JPEG on the device, else (CUDA) by libjpeg-turbo on the CPU, as lenient with damaged files as the CPU
    path's decoders (torchvision's CPU decoder and Pillow read and reject the same 300 damaged JPEGs here)."""
    for where in dict.fromkeys((device, torch.device("cpu"))):
        try:
            return _decode(jpeg, where).to(device)
        except RuntimeError:
            pass
    return None


def decode_jpegs(jpegs: List[torch.Tensor], device: torch.device) -> List[Optional[torch.Tensor]]:
    """uint8 [3, H, W] on `device` per JPEG (bytes as CPU uint8 tensors), None for one that no decoder reads.
    One batched call (nvjpeg decodes a list in one go); it fails as a whole, so then each JPEG alone."""
    if not jpegs:
        return []
    try:
        return list(_decode(jpegs, device))
    except RuntimeError:
        return [_decode_alone(jpeg, device) for jpeg in jpegs]


@functools.lru_cache(maxsize=128)
def _area_weights(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """float [n_out, n_in]: output pixel j averages the input over [j, j + 1) * n_in / n_out, each input pixel
    weighted by its overlap -- OpenCV's INTER_AREA when shrinking (within 1 grey level of it, measured). Crop
    sides repeat (a few dozen per dimension at one crop size), hence the cache: ~0.3 MB each at 224 px."""
    edges = torch.arange(n_out + 1, dtype=torch.float64, device=device) * (n_in / n_out)
    pixels = torch.arange(n_in, dtype=torch.float64, device=device)
    overlap = (torch.minimum(edges[1:, None], pixels + 1) - torch.maximum(edges[:-1, None], pixels)).clamp_(min=0)
    return (overlap / overlap.sum(1, keepdim=True)).float()


def _area(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float [3, H, W] -> [3, height, width] by area averaging (two matmuls)."""
    return _area_weights(image.shape[-2], height, image.device) @ image @ \
        _area_weights(image.shape[-1], width, image.device).T


def resize_crops(images: List[torch.Tensor], boxes: List[List[int]], grids: List[List[int]], size: int) -> torch.Tensor:
    """float [m, 3, size, size]: decode.resize_crop of each box on its grid, from full-size uint8 [3, H, W] decodes.
    A decode larger than its grid (the CPU path decoded that JPEG at a libjpeg M/8 scale) is area-averaged down to
    the grid first, so the box is cut exactly where the CPU path cuts it; then resize_crop's kernels: bilinear, or
    area averaging when the crop shrinks by more than 4/3."""
    out = torch.empty((len(images), 3, size, size), dtype=torch.float32, device=images[0].device)
    for i, (image, (top, left, h, w), (grid_h, grid_w)) in enumerate(zip(images, boxes, grids)):
        if image.shape[1:] != (grid_h, grid_w):
            image = _area(image.float(), grid_h, grid_w)
        crop = image[:, top:top + h, left:left + w].float()
        if size / min(h, w) < AREA_SHRINK:
            out[i] = _area(crop, size, size)
        else:
            out[i] = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return out


def drop_rows(batch: Dict, keep: torch.Tensor) -> Dict:
    """The batch without the samples `keep` (bool [n]) marks False. Every per-sample field of a loader batch is
    image-major with one row per image (keys, sample_ids, caption_index, neg_tokens, teacher_images ...) or K
    (tokens, text_vectors, teacher_tokens ...; K = caption_index's width, data.captions_per_sample)."""
    n, k = keep.shape[0], batch["caption_index"].shape[1]
    per_caption = keep.repeat_interleave(k)
    out = {}
    for name, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] in (n, n * k):
            out[name] = value[(keep if value.shape[0] == n else per_caption).to(value.device)]
        elif isinstance(value, list) and len(value) == n:
            out[name] = [v for v, kept in zip(value, keep.tolist()) if kept]
        else:
            out[name] = value
    return out


def decode_on_device(batch: Dict, device) -> Tuple[Dict, int]:
    """A batch with ENCODED -> (the batch with "images" uint8 [n', 3, S, S] on `device` in its place, the number
    of samples dropped because no decoder reads their JPEG: n - n')."""
    enc: EncodedImages = batch.pop(ENCODED)
    device = torch.device(device)
    n, size = enc.encoded.shape[0], enc.pixels.shape[-1]
    images = torch.empty((n, 3, size, size), dtype=torch.uint8, device=device)
    images[(~enc.encoded).to(device)] = enc.pixels.to(device, non_blocking=True)
    decoded = decode_jpegs(list(enc.data.split(enc.lengths.tolist())), device)
    read = [i for i, image in enumerate(decoded) if image is not None]
    rows = enc.encoded.nonzero().flatten()
    if read:
        crops = resize_crops([decoded[i] for i in read], enc.boxes[read].tolist(), enc.grids[read].tolist(), size)
        flipped = enc.flips[read].to(device)
        crops[flipped] = crops[flipped].flip(-1)
        images[rows[read].to(device)] = crops.round_().clamp_(0, 255).to(torch.uint8)
    keep = torch.ones(n, dtype=torch.bool)
    keep[rows[[i for i, image in enumerate(decoded) if image is None]]] = False
    dropped = n - int(keep.sum())
    if dropped:
        batch = drop_rows(batch, keep)
        images = images[keep.to(device)]
    batch["images"] = images
    return batch, dropped
