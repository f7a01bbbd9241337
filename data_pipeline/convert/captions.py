"""Caption cleaning: fix mojibake, normalise unicode and whitespace; reject empty and undecodable captions."""
import re
import unicodedata
from typing import List, Tuple

import ftfy

_SPACE = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    # ftfy repairs double-encoded UTF-8 ("cafÃ©" -> "café"); NFC makes equal strings equal bytes;
    # newlines inside one caption become spaces because KEY.txt holds one caption per line.
    text = ftfy.fix_text(text, normalization="NFC")
    text = unicodedata.normalize("NFC", text)
    return _SPACE.sub(" ", text).strip()


def undecodable(text: str) -> str:
    """Readers decode with errors="surrogateescape": a lone surrogate marks a byte that was not UTF-8."""
    for position, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            return f"byte 0x{ord(char) - 0xDC00:02x} at character {position} is not UTF-8"
    return ""


def clean_captions(raw: List[str]) -> Tuple[List[str], str, str]:
    """-> (cleaned non-empty captions, status, message); status is "" when the item may go on.

    Empty lines among several captions are dropped; an item with no caption left is rejected.
    """
    cleaned = []
    for text in raw:
        problem = undecodable(text)
        if problem:
            return [], "invalid_caption", f"caption {text.encode('utf-8', 'surrogateescape')[:60]!r}: {problem}; re-save the captions as UTF-8"
        text = clean_caption(text)
        if text:
            cleaned.append(text)
    if not cleaned:
        shown = "no caption" if not raw else f"only empty/whitespace captions {raw[:3]!r}"
        return [], "empty_caption", f"{shown}: every sample needs at least one caption"
    return cleaned, "", ""
