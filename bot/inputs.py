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

from bot.graphemes import keeps_format_character

# Cc: control characters; Cf: format characters (zero-width space and joiners, bidi
# controls, soft hyphen, BOM); Co/Cs/Cn: private use, lone surrogates, unassigned. The one
# exception: the joiners and tag letters inside an emoji (👩‍💻, 🏴󠁧󠁢󠁳󠁣󠁴󠁿), which draw one picture
# and cannot hide a word (see graphemes.keeps_format_character).
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
    text = "".join(
        ch
        for i, ch in enumerate(text)
        if unicodedata.category(ch) not in INVISIBLE or keeps_format_character(text, i)
    )
    return SPACES.sub(" ", text).strip()


def clean_boxes(boxes: list[str]) -> list[str]:
    """Each box cleaned; empty boxes at the end dropped (inner ones keep their place)."""
    cleaned = [clean_text(box) for box in boxes]
    while cleaned and not cleaned[-1]:
        cleaned.pop()
    return cleaned


def with_typed_prefix(prefix: str, boxes: list[str]) -> list[str]:
    """A generated caption with the user's own start of it as they typed it.

    The model reads a prefix normalised to its alphabet (lower case, no emoji, no other
    scripts) and writes its caption on from there; the caption shown puts back what the user
    typed, so no character of theirs is lost: "🔥 Pineapple on" stays "🔥 Pineapple on ...".
    """
    from model.vocab import BOX_BREAK, normalize_user_text

    if not prefix.strip():
        return boxes
    typed = [part.strip() for part in prefix.split(BOX_BREAK)]
    seen = [part.strip() for part in normalize_user_text(prefix)]
    out = list(boxes)
    for k, (mine, read) in enumerate(zip(typed, seen, strict=False)):
        if k >= len(out) or mine == read or not mine:
            continue
        box = out[k]
        if not box.startswith(read):
            continue  # the model changed its start: leave its caption alone
        rest = box[len(read) :]
        joiner = " " if rest and not rest.startswith(" ") and not read else ""
        out[k] = f"{mine}{joiner}{rest}"
    return out
