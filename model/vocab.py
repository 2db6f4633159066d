"""The 72-symbol character vocabulary of the seed project, and text normalisation.

68 characters (lowercase printable ASCII without `;`, plus space) and four specials.
The order is part of every checkpoint; `Vocab.symbols` is saved with it and checked on load.
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass

PAD, START, END, SEP = 0, 1, 2, 3
SPECIALS = ("<pad>", "<start>", "<end>", "<sep>")
CHARS = "".join(sorted(set(string.digits + string.ascii_lowercase + string.punctuation) - {";"})) + " "
# What a user types to move to the next text box.
BOX_BREAK = "|"

assert len(CHARS) == 68


@dataclass(frozen=True)
class Vocab:
    symbols: tuple[str, ...] = SPECIALS + tuple(CHARS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {s: i for i, s in enumerate(self.symbols)})

    def __len__(self) -> int:
        return len(self.symbols)

    def encode_boxes(self, boxes: list[str]) -> list[int]:
        """Normalised box texts -> ids, boxes joined by <sep>. Unknown characters raise KeyError."""
        ids: list[int] = []
        for i, box in enumerate(boxes):
            if i:
                ids.append(SEP)
            ids.extend(self._index[c] for c in box)  # type: ignore[attr-defined]
        return ids

    def decode_boxes(self, ids: list[int]) -> list[str]:
        """Ids (no <start>; stops at <end>) -> box texts."""
        boxes = [""]
        for i in ids:
            if i == END:
                break
            if i == SEP:
                boxes.append("")
            elif i >= len(SPECIALS):
                boxes[-1] += self.symbols[i]
        return boxes

    def is_known(self, ch: str) -> bool:
        return ch in self._index  # type: ignore[attr-defined]


def normalize_box(text: str) -> str:
    """The seed's per-box normalisation, which is also the evaluation protocol: lowercase, strip."""
    return text.lower().strip()


def normalize_user_text(text: str) -> list[str]:
    """A user's prefix -> box texts the model can continue.

    NFKC folds look-alike forms (fullwidth letters, ligatures) to ASCII where Unicode allows,
    typographic quotes become ASCII ones, characters outside the vocabulary are dropped,
    runs of spaces collapse, and `|` starts a new box. The last box keeps a trailing
    space so "pineapple on " continues with a new word.
    """
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_TYPOGRAPHY).lower()
    parts = text.split(BOX_BREAK)
    boxes = []
    for i, part in enumerate(parts):
        kept = "".join(c if c in CHARS else (" " if c.isspace() else "") for c in part)
        kept = " ".join(kept.split()) + (" " if kept.endswith(" ") and kept.strip() else "")
        boxes.append(kept if i == len(parts) - 1 else kept.strip())
    if boxes and not boxes[-1].strip():
        boxes[-1] = ""
    return boxes


_TYPOGRAPHY = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
        ";": ",",
    }
)
