"""Per-sample filters: each looks at one sample and returns its Fate when it removes it, None when it passes.

They run in a fixed order (sample_filters) and the first that removes a sample names its fate, so every input
sample has exactly one fate and the counts add up.
"""
import re
from typing import Callable, List, NamedTuple, Optional, Set

from .options import CurateError, CurateOptions
from .samples import Sample, image_size, sha256_hex


class Fate(NamedTuple):
    status: str     # the parquet status: filtered | duplicate | failed_to_decode
    filter: str     # which filter removed it (the manifest's removed_by key)
    reason: str     # why, with the numbers (error_message)


Filter = Callable[[Sample], Optional[Fate]]
HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


def word_count(sample: Sample) -> int:
    """Words of the sample's longest caption: a whitespace split counts any language alike (DataComp's rule
    without its English-only tokenizer)."""
    return max((len(caption.split()) for caption in sample.captions), default=0)


def min_words(limit: int) -> Filter:
    def check(sample: Sample) -> Optional[Fate]:
        words = word_count(sample)
        if words < limit:
            return Fate("filtered", "min_words", f"longest caption has {words} words < --min-words {limit}")
        return None
    return check


def _size_check(name: str, test: Callable[[int, int], Optional[str]]) -> Filter:
    """A filter on the image's (width, height); an image whose size cannot be read is removed as undecodable."""
    def check(sample: Sample) -> Optional[Fate]:
        try:
            width, height = image_size(sample)
        except (OSError, ValueError) as error:
            return Fate("failed_to_decode", name, f"image size unreadable ({error})")
        reason = test(width, height)
        return Fate("filtered", name, reason) if reason else None
    return check


def min_image_size(limit: int) -> Filter:
    def test(width: int, height: int) -> Optional[str]:
        if min(width, height) < limit:
            return f"{width}x{height}: shorter side {min(width, height)} < --min-image-size {limit}"
        return None
    return _size_check("min_image_size", test)


def max_aspect_ratio(limit: float) -> Filter:
    def test(width: int, height: int) -> Optional[str]:
        ratio = max(width, height) / min(width, height)
        return f"{width}x{height}: aspect ratio {ratio:.3g} > --max-aspect-ratio {limit:g}" if ratio > limit else None
    return _size_check("max_aspect_ratio", test)


def read_list(path: str, flag: str) -> Set[str]:
    """A keep/remove list: one entry a line; blank lines and #-comments skipped; hex digests lower-cased."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except (OSError, UnicodeDecodeError) as error:
        raise CurateError(f"{flag} {path}: cannot read ({error}); give a UTF-8 text file, one entry a line") from None
    entries = {line.lower() if HEX_DIGEST.fullmatch(line) else line for line in lines
               if line and not line.startswith("#")}
    if not entries:
        raise CurateError(f"{flag} {path}: lists nothing (one key, url or sha256 a line)")
    return entries


def identities(sample: Sample) -> List[tuple]:
    """(field, value) pairs a list line may match, in the order a removal reason names them."""
    found = [("key", sample.key)]
    for name in ("source", "url"):
        if sample.meta.get(name):
            found.append((name, str(sample.meta[name])))
    if isinstance(sample.meta.get("sha256"), str):
        found.append(("sha256 of the source bytes", sample.meta["sha256"].lower()))
    if sample.image_bytes is not None:
        found.append(("sha256 of the image bytes", sha256_hex(sample.image_bytes)))
    if sample.source:
        found.append(("sha256 of the url", sha256_hex(sample.source.encode("utf-8"))))
    return found


def keep_list(path: str) -> Filter:
    entries = read_list(path, "--keep-list")

    def check(sample: Sample) -> Optional[Fate]:
        if any(value in entries for _, value in identities(sample)):
            return None
        return Fate("filtered", "keep_list", f"not in --keep-list {path}")
    return check


def remove_list(path: str) -> Filter:
    entries = read_list(path, "--remove-list")

    def check(sample: Sample) -> Optional[Fate]:
        for name, value in identities(sample):
            if value in entries:
                return Fate("filtered", "remove_list", f"its {name} is in --remove-list {path}")
        return None
    return check


def sample_filters(options: CurateOptions) -> List[Filter]:
    """The per-sample filters the options ask for, in the order their fates take precedence."""
    chosen = [(options.keep_list, keep_list), (options.remove_list, remove_list), (options.min_words, min_words),
              (options.min_image_size, min_image_size), (options.max_aspect_ratio, max_aspect_ratio)]
    return [make(setting) for setting, make in chosen if setting]
