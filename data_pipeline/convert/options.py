"""Options of one conversion: what changes the output (recorded in the plan and manifest) and how it runs."""
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

from clipforge.dataclass_cli import option
from clipforge.errors import UserError
from clipforge.data_pipeline.shards import HARD_NEGATIVES, caption_source_name

FORMATS = ("auto", "folder", "csv", "tsv", "parquet", "jsonl", "coco", "flickr", "urls")
RESIZE_MODES = ("keep_ratio", "center_crop", "border", "none")
ENCODE_FORMATS = ("jpg", "webp", "png")


class ConvertError(UserError):
    """A problem with the user's input or flags, found before or outside per-item work: one line, names the fix."""


def _columns(text: str) -> List[str]:
    """--keep-cols "a, b" -> ["a", "b"]."""
    return [column.strip() for column in text.split(",") if column.strip()]


@dataclass
class ConvertOptions:
    """Every field with help text is also a `clipforge convert` flag (clipforge/dataclass_cli.py): its
    default and help are written here only."""
    # --- content options: they decide the output bytes, so they are recorded and must match on resume ---
    inputs: List[str] = option([], "folder, table, COCO/Karpathy json or URL list", "inputs", nargs="*",
                               metavar="INPUT")
    fmt: str = option("auto", "input format", "--format", choices=FORMATS)
    image_col: Optional[str] = option(None, "table column with the image path or URL (default: guessed)")
    # Caption sources (data_pipeline/shards.py): the first column is the primary (KEY.txt, KEY.json's captions);
    # each further column C adds the member KEY.C.txt (C sanitised: caption_source_name), e.g. recaptions.
    caption_col: List[str] = option([], "table column with the captions (default: guessed); repeat it for more "
                                    "caption sources: each further column C is written as KEY.C.txt",
                                    action="append", metavar="COLUMN")
    # NegCLIP hard negatives: captions that do NOT match the image, all written to KEY.neg.txt (one per line) as the
    # caption column is read: a list cell (parquet, jsonl) or the rows of one image give several.
    neg_caption_col: Optional[str] = option(None, "table column with hard-negative captions (a list cell, or one "
                                            "per row of the image), written as KEY.neg.txt for training's "
                                            "data.hard_negatives", metavar="COLUMN")
    keep_cols: List[str] = option([], "comma-separated columns copied into KEY.json and the parquet", type=_columns)
    # Folder/COCO/Flickr json: where the image files are (default: the folder of the input).
    image_root: Optional[str] = option(None, "folder the image paths are relative to (default: the input's folder)")
    # Flickr/COCO Karpathy json: keep only this split ("train", "val", "test"; None = all).
    split: Optional[str] = option(None, "Karpathy json: keep only this split (train also keeps restval)")
    # Text file of image file names (one per line, e.g. Flickr8k's splits/train.txt): keep only these rows.
    include_list: Optional[str] = option(None, "file of image file names, one per line: keep only these")
    image_size: int = option(256, "output size in pixels (see --resize-mode)")
    resize_mode: str = option("keep_ratio", "keep_ratio: shorter side = size; center_crop: then the centre square; "
                              "border: longer side = size, padded to a white square (img2dataset's border); "
                              "none: as is", choices=RESIZE_MODES)
    encode_format: str = option("jpg", "image format in the tars", choices=ENCODE_FORMATS)
    quality: int = option(95, "jpg/webp quality")
    # Filters: an image whose shorter side is below min_size, or whose long/short ratio exceeds max_aspect_ratio,
    # is "filtered"; one with more pixels than max_pixels is refused before decoding (decompression bomb guard;
    # the default is Pillow's own warning limit, 89.5 Mpx).
    min_size: int = option(0, "reject images whose shorter side is smaller")
    max_aspect_ratio: float = option(0.0, "reject long/short above this (0 = off)")
    max_pixels: int = option(89_478_485, "refuse larger images before decoding")
    dedup: bool = option(False, "drop exact duplicate images (same source bytes)")
    samples_per_shard: int = option(1000, "input items per shard (failures included)")
    # open_clip's trainer joins every line of KEY.txt into ONE caption: for shards trained in open_clip, KEY.txt
    # holds only the first caption and KEY.json's "captions" all of them (clipforge's loaders read those).
    one_caption_per_txt: bool = option(False, "KEY.txt holds only the first caption, KEY.json all of them: open_clip's "
                                       "trainer joins the lines of KEY.txt into one caption (clipforge reads "
                                       "KEY.json's either way)", "--one-caption-per-txt", "--open-clip-captions")
    # Site opt-outs of URL inputs (data_pipeline/convert/optout.py): an opted-out image is recorded, not written.
    disallow_optout: bool = option(False, "write images whose response says X-Robots-Tag noai, noimageai, noindex "
                                   "or noimageindex too (honoured by default; the summary says it was off)")
    respect_robots: bool = option(False, "also skip URLs the host's robots.txt disallows to our user agent "
                                  "(read once per host)")
    # --- run options: they never change the output ---
    # The run fails (exit 1) when more than this fraction of the input items is rejected, and always when none is
    # written; 1.0 = only a conversion that wrote nothing fails, 0 = any rejection fails.
    max_reject_fraction: float = option(1.0, "exit 1 when more than this fraction of input items is rejected (and "
                                        "always when none is written; 0 = any rejection fails)")
    workers: int = option(1, "worker processes")
    # Threads per worker that fetch/process items; URL downloads wait on the network, local reads do not.
    threads: int = option(0, "threads per worker (0: 1 for files; URL downloads: 256 at once per worker)")
    timeout: float = option(10.0, "seconds per download attempt")
    retries: int = option(2, "download retries (with backoff) on timeouts and 5xx")
    user_agent: str = "clipforge/0.1 (image-text dataset converter)"
    # on the command line both default from slurm's environment (data_pipeline/convert/cli.py: slurm_defaults)
    num_nodes: int = option(1, "machines sharing this conversion (from slurm)")
    node_rank: int = option(0, "this machine's rank (from slurm)")
    progress: bool = option(True, "no progress bar or read notes", "--no-progress")

    CONTENT_KEYS = ("inputs", "fmt", "image_col", "caption_col", "neg_caption_col", "keep_cols", "image_root", "split",
                    "include_list", "image_size", "resize_mode", "encode_format", "quality", "min_size",
                    "max_aspect_ratio", "max_pixels", "dedup", "samples_per_shard", "one_caption_per_txt", "disallow_optout",
                    "respect_robots")

    def __post_init__(self):
        if isinstance(self.caption_col, str):  # the Python API also takes one column as a plain string
            self.caption_col = [self.caption_col]

    def extra_caption_sources(self) -> Dict[str, str]:
        """Member extension -> column of every member beyond KEY.txt read from a column: each caption column after
        the first (validate() checks them) and --neg-caption-col's KEY.neg.txt. They are cleaned, written and kept in
        the parquet alike; only the manifest (caption_sources vs hard_negatives) and the loader tell them apart."""
        negatives = {HARD_NEGATIVES: self.neg_caption_col} if self.neg_caption_col else {}
        return {**{caption_source_name(column): column for column in self.caption_col[1:]}, **negatives}

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
            (self.threads >= 0, f"--threads {self.threads}: must be >= 0 (0 = 1 for files, 256 downloads per worker for URLs)"),
            (self.timeout > 0, f"--timeout {self.timeout}: must be > 0 seconds"),
            (self.retries >= 0, f"--retries {self.retries}: must be >= 0"),
            (self.num_nodes >= 1, f"--num-nodes {self.num_nodes}: must be >= 1"),
            (0 <= self.node_rank < self.num_nodes,
             f"--node-rank {self.node_rank}: must be in 0..{self.num_nodes - 1} (--num-nodes {self.num_nodes})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConvertError(message)
        self._check_caption_sources()

    def _check_caption_sources(self) -> None:
        """Each further --caption-col needs a member name of its own, and a parquet column that is free."""
        names: Dict[str, str] = {}
        for column in self.caption_col[1:]:
            name = caption_source_name(column)
            if not name:
                raise ConvertError(f"--caption-col {column!r}: no letter or digit to name its KEY.NAME.txt member; "
                                   "rename the column")
            if name in names or column == self.caption_col[0]:
                other = names.get(name, column)
                raise ConvertError(f"--caption-col {column!r} and {other!r} would both be written as KEY.{name}: "
                                   "give each caption source once, with distinct names")
            if parquet_caption_column(name) in self.keep_cols:
                raise ConvertError(f"--keep-cols {parquet_caption_column(name)!r} collides with the parquet column "
                                   f"of --caption-col {column!r}; keep it under another name")
            names[name] = column
        if HARD_NEGATIVES in names:
            raise ConvertError(f"--caption-col {names[HARD_NEGATIVES]!r} would be written as KEY.{HARD_NEGATIVES}, the "
                               "hard negatives' member; rename the column (hard negatives: --neg-caption-col)")
        if self.neg_caption_col is not None and self.neg_caption_col in self.caption_col:
            raise ConvertError(f"--neg-caption-col {self.neg_caption_col!r} is also a --caption-col: a column of "
                               "captions cannot be their negatives too; give the column of negative captions")
        if self.neg_caption_col is not None and parquet_caption_column(HARD_NEGATIVES) in self.keep_cols:
            raise ConvertError(f"--keep-cols {parquet_caption_column(HARD_NEGATIVES)!r} collides with the parquet "
                               "column of --neg-caption-col; keep it under another name")


def parquet_caption_column(source: str) -> str:
    """The parquet column of an extra caption source: "synthetic.txt" -> "caption_synthetic"."""
    return "caption_" + source[:-len(".txt")]
