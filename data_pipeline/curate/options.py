"""Options of one curation run: each field with help text is also a `clipforge curate` flag (its default and help
are written here only, clipforge/dataclass_cli.py)."""
import os
from dataclasses import asdict, dataclass
from typing import Optional

from clipforge.dataclass_cli import option
from clipforge.errors import UserError


class CurateError(UserError):
    """A problem with curate's flags or side files (lists, scores, embeddings): one line, names the file or flag."""


LIST_HELP = ("one entry a line (blank lines and #-comments ignored), each matched against the sample's key, its "
             "source/url (KEY.json), or, for a 64-hex line, the sha256 of the source bytes (KEY.json sha256), of the "
             "stored image bytes, or of the url string (Re-LAION-style hash lists)")


@dataclass
class CurateOptions:
    source: str = option("", "shard dataset to curate (a `clipforge convert` output dir, a .tar or a brace pattern)",
                         "source", metavar="SHARDS")
    out: str = option("", "folder of the new shard dataset (new or empty; required)")
    samples_per_shard: int = option(1000, "kept samples per output shard")
    # DataComp's basic filters; words are a whitespace split, so any language counts the same way.
    min_words: int = option(0, "remove samples whose longest caption has fewer words (whitespace split; 0 = off)")
    min_image_size: int = option(0, "remove samples whose shorter side is smaller, in pixels of the original "
                                 "image when KEY.json records it, else of the stored one (0 = off)")
    max_aspect_ratio: float = option(0.0, "remove samples whose long/short side ratio is above this (0 = off)")
    keep_list: Optional[str] = option(None, "keep only the samples this file lists: " + LIST_HELP)
    remove_list: Optional[str] = option(None, "remove the samples this file lists (matched as --keep-list's lines)")
    # Scores are precomputed (e.g. CLIP image-text cosine): data_pipeline never loads a model.
    scores: Optional[str] = option(None, "parquet with a 'key' column and --score-column, one row per sample")
    score_column: str = option("clip_score", "column of --scores to filter on")
    min_score: Optional[float] = option(None, "remove samples scoring below this", type=float)
    top_fraction: Optional[float] = option(None, "keep the floor(F x input samples) best-scoring samples of the "
                                           "input (ties: earlier sample first), remove the rest", type=float)
    embeddings: Optional[str] = option(None, ".npy [input samples, dim] in the dataset's sample order, or a parquet "
                                       "with 'key' and --embedding-column: near-duplicate removal")
    embedding_column: str = option("embedding", "list column of an --embeddings parquet")
    dedup_threshold: Optional[float] = option(None, "with --embeddings: remove a sample whose cosine similarity to "
                                              "an already kept one is at least this (e.g. 0.95)", type=float)
    dedup_clusters: int = option(0, "with --dedup-threshold: compare a sample only with the kept samples of its own "
                                 "spherical k-means cluster (SemDeDup; e.g. 1000 for 10M samples: ~K x faster, "
                                 "may miss a pair split by a cluster boundary; 0 = compare with all, exact)")
    dedup_seed: int = option(0, "seed of --dedup-clusters' k-means")
    progress: bool = option(True, "no progress bar", "--no-progress")

    def content(self) -> dict:
        """What decides the output: recorded in the manifest's created_by.config."""
        recorded = asdict(self)
        recorded.pop("progress")
        return recorded

    def validate(self) -> None:
        checks = [
            (bool(self.source), "no SHARDS given: pass a shard dataset folder"),
            (bool(self.out), "give --out DIR: the folder of the new shard dataset"),
            (self.samples_per_shard >= 1, f"--samples-per-shard {self.samples_per_shard}: must be >= 1"),
            (self.min_words >= 0, f"--min-words {self.min_words}: must be >= 0"),
            (self.min_image_size >= 0, f"--min-image-size {self.min_image_size}: must be >= 0"),
            (self.max_aspect_ratio == 0 or self.max_aspect_ratio >= 1,
             f"--max-aspect-ratio {self.max_aspect_ratio}: must be >= 1 (0 = no limit)"),
            (self.top_fraction is None or 0 < self.top_fraction <= 1,
             f"--top-fraction {self.top_fraction}: must be in (0, 1]"),
            (bool(self.scores) == (self.min_score is not None or self.top_fraction is not None),
             "--scores goes with --min-score and/or --top-fraction (one without the other does nothing)"),
            (bool(self.embeddings) == (self.dedup_threshold is not None),
             "--embeddings goes with --dedup-threshold (one without the other does nothing)"),
            (self.dedup_clusters >= 0, f"--dedup-clusters {self.dedup_clusters}: must be >= 0 (0 = no clusters)"),
            (not self.dedup_clusters or self.dedup_threshold is not None,
             "--dedup-clusters goes with --embeddings and --dedup-threshold (it clusters the embeddings)"),
            (self.dedup_threshold is None or -1 < self.dedup_threshold <= 1,
             f"--dedup-threshold {self.dedup_threshold}: a cosine similarity, in (-1, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise CurateError(message)
        for flag, path in (("--keep-list", self.keep_list), ("--remove-list", self.remove_list),
                           ("--scores", self.scores), ("--embeddings", self.embeddings)):
            if path and not os.path.isfile(path):
                raise CurateError(f"{flag} {path}: file not found")
