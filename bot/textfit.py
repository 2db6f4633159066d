"""Fitting a caption into a box: clean the text, word-wrap it, find the largest size that fits.

When even the smallest size overflows, long words are broken and then the text is cut
with an ellipsis: a caption never spills outside its box.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bot.graphemes import break_atoms, clusters, keeps_format_character

LINE_PITCH = 1.12  # baseline-to-baseline distance, in font sizes: tight, for capitals
LOOSE_LINE_PITCH = 1.25  # for text with lower case: room for descenders above ascenders
STROKE_RATIO = 0.07  # outline width per px of font size: the classic thick meme outline
ELLIPSIS = "…"
MAX_COMBINING = 2  # combining marks kept per character: "zalgo" stacks would tower out of the box

# Characters that end a line wherever they appear.
LINE_BREAKS = str.maketrans(
    {"\r": "\n", "\v": "\n", "\f": "\n", "\x85": "\n", "\u2028": "\n", "\u2029": "\n"}
)


class TextMeasure(Protocol):
    def width(self, line: str, size: int) -> float: ...

    def ink_extent(self, line: str, size: int) -> tuple[float, float]: ...


@dataclass(frozen=True)
class FittedText:
    lines: tuple[str, ...]
    size: int  # font size, px
    stroke: int  # outline width, px
    pitch: int  # baseline-to-baseline distance, px
    top: float  # ink top of the first line relative to its baseline (<= 0)
    height: float  # ink height of the whole block, outline included
    truncated: bool = False

    @property
    def empty(self) -> bool:
        return not any(line.strip() for line in self.lines)


NOTHING = FittedText(lines=(), size=0, stroke=0, pitch=0, top=0.0, height=0.0)


def clean_caption(text: str) -> str:
    """Text as it should be drawn: typed line breaks kept, invisible and control characters gone."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").translate(LINE_BREAKS))
    kept = []
    marks = 0
    for i, c in enumerate(text):
        category = unicodedata.category(c)
        if c == "\n":
            kept.append(c)
        elif category == "Zs" or c == "\t":
            kept.append(" ")
        elif category == "Cf" and keeps_format_character(text, i):
            kept.append(c)  # the joiner of an emoji sequence, the tag letters of a flag
            continue
        elif category[0] == "C":  # control, format (zero-width), surrogate, private use, unassigned
            continue
        elif category in ("Mn", "Me"):
            marks += 1
            if marks <= MAX_COMBINING:
                kept.append(c)
            continue
        else:
            kept.append(c)
        marks = 0
    return tidy_whitespace("".join(kept))


def tidy_whitespace(text: str) -> str:
    """Single spaces inside lines, no blank lines at either end, at most one blank line in a row."""
    lines = [" ".join(line.split()) for line in text.split("\n")]
    tidy: list[str] = []
    for line in lines:
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    while tidy and not tidy[-1]:
        tidy.pop()
    return "\n".join(tidy)


def stroke_for(size: int, outline: bool = True) -> int:
    return max(1, round(size * STROKE_RATIO)) if outline else 0


def break_word(word: str, fits: Callable[[str], bool]) -> list[str]:
    """`word` cut into the longest pieces that fit; [] if not even one character fits.

    Cuts fall between what a reader sees as characters: never inside an emoji or between a
    letter and its marks."""
    parts = clusters(word) if not word.isascii() else list(word)
    pieces = []
    while parts:
        lo, hi = 0, len(parts)  # longest fitting prefix length, by bisection: widths only grow
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits("".join(parts[:mid])):
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            return []
        pieces.append("".join(parts[:lo]))
        parts = parts[lo:]
    return pieces


def wrap(
    text: str, fits: Callable[[str], bool], *, max_lines: int, break_words: bool
) -> tuple[list[str], bool]:
    """Greedy word wrap keeping typed line breaks.

    Returns the lines and whether all of the text made it: False once more than
    `max_lines` lines are needed, or (without `break_words`) a word is wider than a line.
    Stopping early keeps a 5,000-character caption as cheap as a box-full.
    """
    lines: list[str] = []

    def add(line: str) -> bool:
        lines.append(line)
        return len(lines) <= max_lines

    for paragraph in text.split("\n"):
        line = ""
        for word, space in _words(paragraph):
            candidate = f"{line}{space}{word}" if line else word
            if fits(candidate):
                line = candidate
                continue
            if line and not add(line):
                return lines[:max_lines], False
            line = word
            if fits(word):
                continue
            pieces = break_word(word, fits) if break_words else []
            if not pieces:
                return lines[:max_lines], False
            for piece in pieces[:-1]:
                if not add(piece):
                    return lines[:max_lines], False
            line = pieces[-1]
        if not add(line):
            return lines[:max_lines], False
    return lines, True


def _words(paragraph: str) -> list[tuple[str, str]]:
    """The pieces a line may break between, each with what joins it to the one before:
    words joined by a space, and inside a word CJK characters and emoji joined by nothing."""
    pieces = []
    for word in paragraph.split(" "):
        if word:
            pieces += [(atom, " " if j == 0 else "") for j, atom in enumerate(break_atoms(word))]
    return pieces


def line_pitch(text: str) -> float:
    """Baseline-to-baseline distance in font sizes: capitals sit tighter than anything else
    (lower case, or scripts whose marks reach above and below the line)."""
    if text.isascii():
        return LINE_PITCH if text == text.upper() else LOOSE_LINE_PITCH
    return LOOSE_LINE_PITCH if any(c.isalpha() and not c.isupper() for c in text) else LINE_PITCH


@dataclass(frozen=True)
class _Job:
    """One caption to fit into one box (width x height px)."""

    text: str
    width: float
    height: float
    measure: TextMeasure
    outline: bool
    spacing: float  # line pitch in font sizes

    def block(self, lines: list[str], size: int, complete: bool) -> FittedText:
        stroke = stroke_for(size, self.outline)
        pitch = round(size * self.spacing)
        top = self.measure.ink_extent(lines[0], size)[0] if lines else 0.0
        bottom = (len(lines) - 1) * pitch + self.measure.ink_extent(lines[-1], size)[1] if lines else 0.0
        return FittedText(
            lines=tuple(lines),
            size=size,
            stroke=stroke,
            pitch=pitch,
            top=top,
            height=bottom - top + 2 * stroke,
            truncated=not complete,
        )

    def fits_width(self, size: int) -> Callable[[str], bool] | None:
        """Whether a line fits across the box at `size`; None if not even the outline does."""
        room = self.width - 2 * stroke_for(size, self.outline)
        if room <= 0:
            return None
        return lambda line: self.measure.width(line, size) <= room

    def attempt(self, size: int, *, break_words: bool) -> FittedText | None:
        """The text wrapped at `size` (marked truncated if it did not all fit); None if nothing can."""
        fits = self.fits_width(size)
        room = self.height - 2 * stroke_for(size, self.outline)
        if fits is None or room < 0:
            return None
        # Upper bound: lines with no ink at all would still need a pitch each.
        max_lines = int(room // round(size * self.spacing)) + 1
        lines, complete = wrap(self.text, fits, max_lines=max_lines, break_words=break_words)
        return self.block(lines, size, complete)

    def largest(self, sizes: range, *, break_words: bool) -> FittedText | None:
        """Binary search over sizes: a larger size needs more room, so one failure bounds the rest."""
        best = None
        lo, hi = sizes.start, sizes.stop - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            fitted = self.attempt(mid, break_words=break_words)
            if fitted is not None and not fitted.truncated and fitted.height <= self.height:
                best, lo = fitted, mid + 1
            else:
                hi = mid - 1
        return best

    def cut(self, size: int) -> FittedText:
        """As much of the text as fits at `size`, words broken, the cut marked with an ellipsis."""
        fitted = self.attempt(size, break_words=True)
        fits = self.fits_width(size)
        if fitted is None or fits is None:
            return NOTHING
        lines = list(fitted.lines)
        complete = not fitted.truncated
        while lines and self.block(lines, size, complete).height > self.height:
            lines.pop()
            complete = False
        if not lines:
            return NOTHING
        if not complete:
            lines[-1] = with_ellipsis(lines[-1], fits)
        return self.block(lines, size, complete)


def with_ellipsis(line: str, fits: Callable[[str], bool]) -> str:
    """`line` shortened until it fits with an ellipsis at its end."""
    parts = clusters(line)
    while parts:
        candidate = "".join(parts).rstrip() + ELLIPSIS
        if fits(candidate):
            return candidate
        parts.pop()
    return ELLIPSIS if fits(ELLIPSIS) else ""


def fit_text(
    text: str,
    width: float,
    height: float,
    measure: TextMeasure,
    *,
    min_size: int,
    max_size: int,
    outline: bool = True,
) -> FittedText:
    """The largest layout of `text` (already cleaned) inside a `width` x `height` px box.

    Whole words at the largest size in [min_size, max_size] that fits; failing that,
    words broken at the largest size that fits; failing that, the text cut at min_size.
    """
    if not text.strip() or width <= 0 or height <= 0:
        return NOTHING
    job = _Job(text, width, height, measure, outline, line_pitch(text))
    min_size = max(1, min(min_size, max_size))
    sizes = range(min_size, max(min_size, max_size) + 1)
    for break_words in (False, True):
        fitted = job.largest(sizes, break_words=break_words)
        if fitted is not None:
            return fitted
    return job.cut(min_size)
