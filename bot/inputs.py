"""Cleaning what users type before anything else sees it.

Text arrives from chat platforms in any Unicode: look-alike letters (fullwidth "ｄｒａｋｅ"),
invisible characters (zero-width spaces that hide a banned word, bidi overrides that flip
what a caption shows), control characters. `clean_text` folds it to one canonical form
(NFKC), drops what cannot be seen, and turns every kind of line break or tab into a plain
space, so the filter, the model and the renderer all see the same plain text.
"""

from __future__ import annotations

import re
import unicodedata

# Cc: control characters; Cf: format characters (zero-width space and joiners, bidi
# controls, soft hyphen, BOM); Co/Cs/Cn: private use, lone surrogates, unassigned.
INVISIBLE = frozenset(("Cc", "Cf", "Co", "Cs", "Cn"))
SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """NFKC-normalised `text` with invisible characters removed and whitespace collapsed."""
    # Dropping a character can bring together two that NFKC composes or reorders (an unassigned
    # code point between two combining marks), so clean until nothing changes; it settles in one
    # or two rounds.
    for _ in range(8):
        cleaned = _clean_once(text)
        if cleaned == text:
            break
        text = cleaned
    return text


def _clean_once(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    # Whitespace first (tabs and newlines are Cc too): a line break separates words.
    text = SPACES.sub(" ", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in INVISIBLE)
    return SPACES.sub(" ", text).strip()


def clean_boxes(boxes: list[str]) -> list[str]:
    """Each box cleaned; empty boxes at the end dropped (inner ones keep their place)."""
    cleaned = [clean_text(box) for box in boxes]
    while cleaned and not cleaned[-1]:
        cleaned.pop()
    return cleaned
