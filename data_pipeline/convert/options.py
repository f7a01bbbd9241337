"""Options of one conversion: what changes the output (recorded in the plan and manifest) and how it runs."""
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from clipforge_base.errors import UserError

FORMATS = ("auto", "folder", "csv", "tsv", "parquet", "jsonl", "coco", "flickr", "urls")
RESIZE_MODES = ("keep_ratio", "center_crop", "border", "none")
ENCODE_FORMATS = ("jpg", "webp", "png")


class ConvertError(UserError):
    """A problem with the user's input or flags, found before or outside per-item work: one line, names the fix."""


@dataclass
class ConvertOptions:
    # --- content options: they decide the output bytes, so they are recorded and must match on resume ---
    inputs: List[str] = field(default_factory=list)
    fmt: str = "auto"
    image_col: Optional[str] = None
    caption_col: Optional[str] = None
    keep_cols: List[str] = field(default_factory=list)
    # Folder/COCO/Flickr json: where the image files are (default: the folder of the input).
    image_root: Optional[str] = None
    # Flickr/COCO Karpathy json: keep only this split ("train", "val", "test"; None = all).
    split: Optional[str] = None
    # Text file of image file names (one per line, e.g. Flickr8k's splits/train.txt): keep only these rows.
    include_list: Optional[str] = None
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    encode_format: str = "jpg"
    quality: int = 95
    # Filters: an image whose shorter side is below min_size, or whose long/short ratio exceeds max_aspect_ratio,
    # is "filtered"; one with more pixels than max_pixels is refused before decoding (decompression bomb guard;
    # the default is Pillow's own warning limit, 89.5 Mpx).
    min_size: int = 0
    max_aspect_ratio: float = 0.0
    max_pixels: int = 89_478_485
    dedup: bool = False
    samples_per_shard: int = 1000
    # open_clip's trainer joins every line of KEY.txt into ONE caption: for shards trained in open_clip, KEY.txt
    # holds only the first caption and KEY.json's "captions" all of them (clipforge's loaders read those).
    one_caption_per_txt: bool = False
    # --- run options: they never change the output ---
    workers: int = 1
    # Threads per worker that fetch/process items; URL downloads wait on the network, local reads do not.
    threads: int = 0
    timeout: float = 10.0
    retries: int = 2
    user_agent: str = "clipforge/0.1 (image-text dataset converter)"
    num_nodes: int = 1
    node_rank: int = 0
    progress: bool = True
    # The run fails (exit 1) when more than this fraction of the input items is rejected, and always when none is
    # written; 1.0 = only a conversion that wrote nothing fails, 0 = any rejection fails.
    max_reject_fraction: float = 1.0

    CONTENT_KEYS = ("inputs", "fmt", "image_col", "caption_col", "keep_cols", "image_root", "split", "include_list",
                    "image_size", "resize_mode", "encode_format", "quality", "min_size", "max_aspect_ratio",
                    "max_pixels", "dedup", "samples_per_shard", "one_caption_per_txt")

    def content(self) -> dict:
        """The options that decide the output: written to the plan and the manifest's created_by.config."""
        full = asdict(self)
        return {key: full[key] for key in self.CONTENT_KEYS}

    def validate(self) -> None:
        checks = [
            (bool(self.inputs), "no INPUT given: pass a folder, table, COCO/Flickr json or URL list"),
            (self.fmt in FORMATS, f"--format {self.fmt!r}: choose one of {', '.join(FORMATS)}"),
            (self.resize_mode in RESIZE_MODES, f"--resize-mode {self.resize_mode!r}: choose one of {', '.join(RESIZE_MODES)}"),
            (self.encode_format in ENCODE_FORMATS, f"--encode-format {self.encode_format!r}: choose one of {', '.join(ENCODE_FORMATS)}"),
            (self.image_size >= 1, f"--image-size {self.image_size}: must be >= 1"),
            (1 <= self.quality <= 100, f"--quality {self.quality}: must be in 1..100"),
            (self.min_size >= 0, f"--min-size {self.min_size}: must be >= 0"),
            (self.max_aspect_ratio == 0 or self.max_aspect_ratio >= 1,
             f"--max-aspect-ratio {self.max_aspect_ratio}: must be >= 1 (0 = no limit)"),
            (self.max_pixels >= 1, f"--max-pixels {self.max_pixels}: must be >= 1"),
            (0 <= self.max_reject_fraction <= 1,
             f"--max-reject-fraction {self.max_reject_fraction}: must be in 0..1 (1 = fail only when nothing is written)"),
            (self.samples_per_shard >= 1, f"--samples-per-shard {self.samples_per_shard}: must be >= 1"),
            (self.workers >= 1, f"--workers {self.workers}: must be >= 1"),
            (self.threads >= 0, f"--threads {self.threads}: must be >= 0 (0 = 1 for files, 16 for URLs)"),
            (self.timeout > 0, f"--timeout {self.timeout}: must be > 0 seconds"),
            (self.retries >= 0, f"--retries {self.retries}: must be >= 0"),
            (self.num_nodes >= 1, f"--num-nodes {self.num_nodes}: must be >= 1"),
            (0 <= self.node_rank < self.num_nodes,
             f"--node-rank {self.node_rank}: must be in 0..{self.num_nodes - 1} (--num-nodes {self.num_nodes})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConvertError(message)
