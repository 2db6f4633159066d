"""Fonts for captions: Anton from its package, fallbacks for everything Anton lacks.

Text is drawn cluster by cluster (see graphemes.py) with the first font that has every
character of the cluster: Anton, then bold Noto faces for other scripts (Cyrillic, Greek,
Arabic, Hebrew, Devanagari, Thai, CJK), then colour emoji, then whatever fontconfig offers.
Emoji prefer the colour font. A colour font that comes in one bitmap size only (Noto Color
Emoji: 109 px) is drawn at that size and scaled. Right-to-left text is ordered here and shaped
by Pillow's libraqm. A cluster no font has is drawn as U+FFFD, and `undrawable` names it so the
user can be told: nothing a user typed vanishes silently.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import math
import shutil
import subprocess
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFilter, ImageFont, features

from bot.graphemes import ZWJ, clusters, is_emoji, is_tag, is_variation_selector, is_wide

ANTON_PACKAGE = "fontpkg_anton"
ANTON_FILE = "files/Anton-Regular.ttf"

NOTO = Path("/usr/share/fonts/truetype/noto")
NOTO_CJK = Path("/usr/share/fonts/opentype/noto")
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")


@dataclass(frozen=True)
class FontFile:
    path: Path
    index: int = 0  # face index inside a .ttc collection


# Debian's places for the fonts that cover what Anton lacks, best first: bold faces to sit
# beside Anton (fonts-noto-core, fonts-noto-cjk), colour emoji (fonts-noto-color-emoji), then
# DejaVu (fonts-dejavu-core) and Droid Sans Fallback (fonts-droid-fallback), a small CJK font.
# `scripts/setup.sh` installs the Noto packages.
KNOWN_FALLBACKS = (
    FontFile(NOTO / "NotoSans-Bold.ttf"),
    FontFile(NOTO / "NotoSansArabic-Bold.ttf"),
    FontFile(NOTO / "NotoSansHebrew-Bold.ttf"),
    FontFile(NOTO / "NotoSansDevanagari-Bold.ttf"),
    FontFile(NOTO / "NotoSansThai-Bold.ttf"),
    FontFile(NOTO_CJK / "NotoSansCJK-Bold.ttc"),  # face 0: Japanese forms; has Chinese and Hangul
    FontFile(NOTO / "NotoColorEmoji.ttf"),
    FontFile(DEJAVU / "DejaVuSans-Bold.ttf"),
    FontFile(DEJAVU / "DejaVuSans.ttf"),
    FontFile(Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf")),
)
# fontconfig can list a few hundred fonts; each is read only when a character is in none before it.
MAX_FONTCONFIG_FALLBACKS = 256

# Any size FreeType renders: a font that loads at this size scales freely.
PROBE_SIZE = 20

# Characters that take no ink but must stay in the text.
WHITESPACE = frozenset(" \n")

# Glyph extents are measured once at this size and scaled: laying out one caption tries
# a dozen sizes, and measuring each line's ink at each of them dominated the render time.
REFERENCE_SIZE = 200

# An emoji's em relative to the caption's font size: Noto Color Emoji's pictures are 1.17 em
# tall, so at 0.9 they stand about as tall as Anton's capitals plus a descender.
EMOJI_EM = 0.9

# What is drawn for a cluster no font has (the first of these that some font has).
REPLACEMENTS = ("\ufffd", "\u25a1", "?")

RAQM = features.check("raqm")
_RTL_CLASSES = frozenset(("R", "AL"))


class FontError(RuntimeError):
    """The meme font is missing or unreadable; the message says what to install."""


def anton_font() -> FontFile:
    """The Anton font file inside the installed fontpkg-anton package."""
    try:
        resource = importlib.resources.files(ANTON_PACKAGE).joinpath(ANTON_FILE)
    except ModuleNotFoundError as exc:
        raise FontError("the Anton font is missing: pip install fontpkg-anton") from exc
    path = Path(str(resource))
    if not path.is_file():
        raise FontError(f"the Anton font is missing at {path}: reinstall fontpkg-anton")
    return FontFile(path)


def fontconfig_fallbacks(pattern: str = "sans-serif:bold") -> list[FontFile]:
    """fontconfig's own fallback chain for `pattern`, best first; [] without fontconfig.

    `fc-match -s` trims fonts that add no coverage, so the list stays short even on a
    machine with thousands of fonts.
    """
    fc_match = shutil.which("fc-match")
    if fc_match is None:
        return []
    try:
        out = subprocess.run(
            [fc_match, "-s", "--format", "%{file}\t%{index}\n", pattern],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    fonts = []
    for line in out.splitlines():
        path, _, index = line.partition("\t")
        if path:
            fonts.append(FontFile(Path(path), int(index) if index.isdigit() else 0))
    return fonts


def find_fallback_fonts(
    configured: Sequence[Path] = (), *, use_fontconfig: bool = True
) -> tuple[FontFile, ...]:
    """Fallback fonts in the order they are tried: configured paths, known bold faces, fontconfig."""
    candidates = [FontFile(Path(p)) for p in configured] + list(KNOWN_FALLBACKS)
    if use_fontconfig:
        candidates += fontconfig_fallbacks()[:MAX_FONTCONFIG_FALLBACKS]
    seen: set[tuple[Path, int]] = set()
    found = []
    for font in candidates:
        key = (font.path.resolve() if font.path.exists() else font.path, font.index)
        if key not in seen and font.path.is_file():
            seen.add(key)
            found.append(font)
    return tuple(found)


@dataclass(frozen=True)
class Face:
    """What a font file offers, read once: its characters, and how it must be drawn."""

    coverage: frozenset[int]
    native_size: int | None = None  # a bitmap-only font loads at this size only
    colour: bool = False  # has colour glyphs: drawn with embedded_color

    @property
    def usable(self) -> bool:
        return bool(self.coverage)


NO_FACE = Face(frozenset())


@dataclass(frozen=True)
class Run:
    """A piece of a line in one font and one direction, in the order it is drawn (left to right)."""

    font_index: int
    font: ImageFont.FreeTypeFont  # at the size it is drawn: a bitmap font at its native size
    text: str  # logical order; with libraqm, `direction` says how it runs
    direction: str | None  # "rtl" / "ltr" (libraqm), or None: drawn as it comes
    scale: float  # 1.0, or how much a bitmap font's drawing is scaled
    colour: bool
    width: float  # advance at the asked size, px


def _ignorable(c: str) -> bool:
    """Invisible characters that steer a cluster's shape: a font may lack them without harm."""
    return c in (ZWJ, "\u200c") or is_variation_selector(c) or is_tag(c)


def _read_face(data: bytes, index: int) -> Face:
    """The Face of a font file's bytes; NO_FACE if it is unreadable or cannot be drawn."""
    try:
        with TTFont(io.BytesIO(data), fontNumber=index, lazy=True) as tt:
            cmap = tt.getBestCmap() or {}
            colour = any(table in tt for table in ("CBDT", "sbix", "COLR"))
            native = None
            if not any(table in tt for table in ("glyf", "CFF ", "CFF2")):  # bitmaps only
                if "CBLC" in tt:
                    sizes = [s.bitmapSizeTable.ppemY for s in tt["CBLC"].strikes]
                elif "sbix" in tt:
                    sizes = [int(ppem) for ppem in tt["sbix"].strikes]
                else:
                    sizes = []
                if not sizes or not colour:
                    return NO_FACE
                native = max(sizes)
        ImageFont.truetype(io.BytesIO(data), native or PROBE_SIZE, index=index)
    except Exception:  # any broken font file just covers nothing
        return NO_FACE
    return Face(frozenset(cmap), native, colour)


class FontSet:
    """A primary font and its fallbacks, with font objects and coverage cached per instance.

    All file reads go through `read_bytes`, so the owner decides how files are read (and
    tests can count them). Safe to share between threads: the caches are lru_caches and
    CPython's GIL serialises Pillow's FreeType calls.
    """

    def __init__(
        self,
        primary: FontFile,
        fallbacks: Sequence[FontFile] = (),
        *,
        read_bytes: Callable[[Path], bytes] = Path.read_bytes,
    ) -> None:
        self.files: tuple[FontFile, ...] = (primary, *fallbacks)
        self._read_bytes = read_bytes
        self._data = functools.lru_cache(maxsize=None)(self._load_data)
        self.face = functools.lru_cache(maxsize=None)(self._load_face)
        self._font = functools.lru_cache(maxsize=512)(self._load_font)
        self.font_for_cluster = functools.lru_cache(maxsize=8192)(self._resolve)
        self._glyph_extent = functools.lru_cache(maxsize=4096)(self._measure_glyph_extent)
        self._segments = functools.lru_cache(maxsize=4096)(self._segment)
        self._advance = functools.lru_cache(maxsize=16384)(self._measure_advance)
        self._extent = functools.lru_cache(maxsize=16384)(self._measure_extent)
        self._picture = functools.lru_cache(maxsize=1024)(self._draw_picture)
        self._native = functools.lru_cache(maxsize=512)(self._draw_native)
        if not self._coverage(0):
            raise FontError(f"cannot read the meme font {primary.path}: reinstall fontpkg-anton")
        # Characters whose ink can be predicted one glyph at a time: the primary font's,
        # less combining marks (they stack on their neighbours).
        self._simple = frozenset(c for c in self._coverage(0) if not unicodedata.combining(chr(c)))
        self._primary = frozenset(self._coverage(0))
        self.replacement = next(
            (r for r in REPLACEMENTS if self.font_for_cluster(r)[0] is not None), REPLACEMENTS[-1]
        )

    # --- files ---

    def _load_data(self, i: int) -> bytes:
        return self._read_bytes(self.files[i].path)

    def _load_face(self, i: int) -> Face:
        if i == 0:
            return _read_face(self._data(0), self.files[0].index)
        # Fallbacks are read whole only once they draw something: many are looked at for
        # their character maps alone.
        try:
            data = self._read_bytes(self.files[i].path)
        except OSError:
            return NO_FACE
        return _read_face(data, self.files[i].index)

    def _coverage(self, i: int) -> frozenset[int]:
        """Code points font `i` has glyphs for; empty if the font is unreadable or unscalable."""
        return self.face(i).coverage

    def _load_font(self, i: int, size: int) -> ImageFont.FreeTypeFont:
        # BytesIO.read() hands back the cached bytes object itself, so every size of a font
        # shares one copy of the file in memory.
        return ImageFont.truetype(io.BytesIO(self._data(i)), size, index=self.files[i].index)

    def font(self, i: int, size: int) -> ImageFont.FreeTypeFont:
        """Font `i` for drawing at `size` px (a bitmap-only font: at the one size it has)."""
        native = self.face(i).native_size
        return self._font(i, native or size)

    def _scale(self, i: int, size: int) -> float:
        native = self.face(i).native_size
        return size * EMOJI_EM / native if native else 1.0

    # --- which font draws what ---

    def _resolve(self, cluster: str) -> tuple[int | None, str]:
        """(font index, what to draw) for one cluster; (None, cluster) when no font has it.

        The first font that has every character of the cluster draws it, colour fonts first for
        an emoji and last for anything else. Failing that, the first that has its base character
        draws what it has. Invisible joiners and selectors a font lacks are left out (they only
        steer the shape), and so are marks it lacks (`undrawable` names those).
        """
        needed = [ord(c) for c in cluster if not _ignorable(c)] or [ord(cluster[0])]
        emoji = is_emoji(cluster)
        full: int | None = None  # has it all, but is not the kind preferred
        base: tuple[int, int] | None = None  # (rank, index): has the base character only
        for i in range(len(self.files)):
            face = self.face(i)
            preferred = face.colour == emoji
            if face.coverage.issuperset(needed):
                if preferred:
                    full = i
                    break
                if full is None:
                    full = i
            elif needed[0] in face.coverage:
                rank = 0 if preferred else 1
                if base is None or rank < base[0]:
                    base = (rank, i)
        chosen = full if full is not None else base[1] if base is not None else None
        if chosen is None:
            return None, cluster
        coverage = self._coverage(chosen)
        return chosen, "".join(c for c in cluster if ord(c) in coverage)

    def font_for(self, char: str) -> int | None:
        """Index of the font that draws `char` on its own, or None when none has it."""
        return self.font_for_cluster(char)[0]

    def _lost(self, cluster: str) -> str:
        """The characters of `cluster` that will not be drawn (invisible ones do not count)."""
        index, kept = self.font_for_cluster(cluster)
        if index is None:
            return cluster
        return "".join(c for c in cluster if c not in kept and not _ignorable(c))

    def drawable(self, text: str) -> str:
        """`text` as drawn: each cluster no font has replaced by a visible mark (see `undrawable`)."""
        if self._primary.issuperset(map(ord, text)):
            return text
        out = []
        for cluster in clusters(text):
            if cluster in WHITESPACE:
                out.append(cluster)
                continue
            index, kept = self.font_for_cluster(cluster)
            out.append(self.replacement if index is None else kept)
        return "".join(out)

    def undrawable(self, text: str) -> list[str]:
        """The clusters (or marks) of `text` that no font here can draw, each once, in order."""
        if self._primary.issuperset(map(ord, text)):
            return []
        lost = (self._lost(c) for c in clusters(text) if c not in WHITESPACE)
        return list(dict.fromkeys(c for c in lost if c))

    # --- lines ---

    def _segment(self, line: str) -> tuple[tuple[int, str, bool], ...]:
        """`line` (drawable, no newline) as (font index, text, right-to-left) pieces in visual order."""
        parts = clusters(line)
        found = [None if part == " " else self.font_for_cluster(part)[0] for part in parts]
        # A space goes with the font before it (so a fallback phrase is one run), or failing
        # that the one after it, when that font has a space.
        fonts = []
        for k, part in enumerate(parts):
            font = found[k]
            if part == " ":
                before = next((f for f in reversed(fonts) if f is not None), None)
                after = next((f for f in found[k + 1 :] if f is not None), None)
                font = next((f for f in (before, after) if f is not None and 0x20 in self._coverage(f)), 0)
            fonts.append(0 if font is None else font)
        levels = bidi_levels(parts)
        order = visual_order(levels)
        pieces: list[tuple[int, int, list[str]]] = []
        for k in order:
            font, level = fonts[k], levels[k]
            if pieces and pieces[-1][0] == font and pieces[-1][1] == level:
                pieces[-1][2].append(parts[k])
            else:
                pieces.append((font, level, [parts[k]]))
        segments = []
        for font, level, items in pieces:
            rtl = level % 2 == 1
            # With libraqm the text goes in logical order and raqm lays it out right to left;
            # without it the pieces are drawn as they stand, already in visual order.
            text = "".join(reversed(items)) if rtl and RAQM else "".join(items)
            segments.append((font, text, rtl))
        return tuple(segments)

    def _measure_advance(self, i: int, text: str, direction: str | None, size: int) -> float:
        parts = clusters(text)
        if len(parts) > 1 and all(is_wide(p) for p in parts):
            # CJK characters and emoji do not kern or join: their advances add up, and each is
            # measured once (laying out a whole CJK line at every size tried was most of the time).
            return sum(self._advance(i, p, direction, size) for p in parts)
        return self.font(i, size).getlength(text, direction=direction) * self._scale(i, size)

    def _measure_extent(self, i: int, text: str, direction: str | None, size: int) -> tuple[float, float]:
        _, top, _, bottom = self.font(i, size).getbbox(text, anchor="ls", direction=direction)
        scale = self._scale(i, size)
        return top * scale, bottom * scale

    def runs(self, line: str, size: int) -> list[Run]:
        """`line` (drawable, no newline) split into runs that share a font, left to right."""
        if self._primary.issuperset(map(ord, line)):
            if not line:
                return []
            font = self.font(0, size)
            return [Run(0, font, line, None, 1.0, False, font.getlength(line))]
        runs = []
        for i, text, rtl in self._segments(line):
            direction = ("rtl" if rtl else "ltr") if RAQM else None
            face = self.face(i)
            runs.append(
                Run(
                    i,
                    self.font(i, size),
                    text,
                    direction,
                    self._scale(i, size),
                    face.colour,
                    self._advance(i, text, direction, size),
                )
            )
        return runs

    def width(self, line: str, size: int) -> float:
        """Advance width of `line` at `size` px."""
        return sum(run.width for run in self.runs(line, size))

    def _measure_glyph_extent(self, char: str) -> tuple[float, float]:
        _, top, _, bottom = self.font(0, REFERENCE_SIZE).getbbox(char, anchor="ls")
        return top / REFERENCE_SIZE, bottom / REFERENCE_SIZE

    def ink_extent(self, line: str, size: int) -> tuple[float, float]:
        """Top and bottom of `line`'s ink relative to its baseline (top is negative); (0, 0) if none."""
        if self._simple.issuperset(map(ord, line)):
            extents = [self._glyph_extent(c) for c in set(line) - WHITESPACE]
            if not extents:
                return 0.0, 0.0
            # One pixel of slack either way for hinting and rounding at the real size.
            top = math.floor(min(0.0, *(t for t, _ in extents)) * size) - 1
            bottom = math.ceil(max(0.0, *(b for _, b in extents)) * size) + 1
            return float(top), float(bottom)
        top, bottom = 0.0, 0.0
        for run in self.runs(line, size):
            if run.text.strip():
                t, b = self._extent(run.font_index, run.text, run.direction, size)
                top, bottom = min(top, t), max(bottom, b)
        return top, bottom

    # --- colour glyphs ---

    def picture(
        self, run: Run, size: int, outline: int = 0
    ) -> tuple[Image.Image, Image.Image | None, int, int]:
        """A colour run drawn as an RGBA picture at `size` px: (picture, outline mask or None, dx, dy),
        where (dx, dy) takes the pen position on the baseline to the picture's top-left corner.
        The outline mask is the picture's shape grown by `outline` px, for the meme outline."""
        return self._picture(run.font_index, run.text, run.direction, size, outline)

    def _draw_native(self, i: int, text: str, direction: str | None) -> tuple[Image.Image, int, int]:
        """The colour glyphs at the font's own size, and their corner relative to the pen."""
        font = self.font(i, REFERENCE_SIZE)
        left, top, right, bottom = font.getbbox(text, anchor="ls", direction=direction)
        canvas = Image.new("RGBA", (max(1, right - left), max(1, bottom - top)), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text(
            (-left, -top), text, font=font, anchor="ls", direction=direction, embedded_color=True
        )
        return canvas, left, top

    def _draw_picture(
        self, i: int, text: str, direction: str | None, size: int, outline: int
    ) -> tuple[Image.Image, Image.Image | None, int, int]:
        canvas, left, top = self._native(i, text, direction)
        scale = self._scale(i, size) * (self.font(i, size).size / self.font(i, REFERENCE_SIZE).size)
        if scale != 1.0:
            w = max(1, round(canvas.width * scale))
            h = max(1, round(canvas.height * scale))
            canvas = canvas.resize((w, h), Image.Resampling.LANCZOS)
        dx, dy = round(left * scale), round(top * scale)
        mask = None
        if outline > 0:
            padded = Image.new("L", (canvas.width + 2 * outline, canvas.height + 2 * outline), 0)
            padded.paste(canvas.getchannel("A"), (outline, outline))
            mask = padded.filter(ImageFilter.MaxFilter(2 * outline + 1))
        return canvas, mask, dx, dy


# --- right-to-left text -------------------------------------------------------------------------


def _strong(cluster: str) -> str | None:
    """ "L", "R" or None (neutral) for a cluster, by its first character; numbers are "N"."""
    kind = unicodedata.bidirectional(cluster[0])
    if kind == "L":
        return "L"
    if kind in _RTL_CLASSES:
        return "R"
    if kind in ("EN", "AN"):
        return "N"
    return None


def bidi_levels(parts: Sequence[str]) -> list[int]:
    """Embedding levels of a line's clusters (Unicode's bidi algorithm, simplified for one line
    without explicit embeddings): the first strong character sets the line's direction, numbers
    after right-to-left text run left to right inside it, neutrals between two runs of the same
    direction take it and otherwise the line's, trailing spaces take the line's."""
    kinds = [_strong(p) for p in parts]
    if "R" not in kinds and not any(unicodedata.bidirectional(p[0]) == "AN" for p in parts):
        return [0] * len(parts)
    base = 1 if next((k for k in kinds if k in ("L", "R")), "L") == "R" else 0
    # Numbers: as L after L text (or at the start of a left-to-right line), else left to right in R.
    resolved: list[str | None] = []
    last_strong = "R" if base else "L"
    for part, kind in zip(parts, kinds, strict=True):
        if kind == "N":
            arabic = unicodedata.bidirectional(part[0]) == "AN"
            resolved.append("L" if last_strong == "L" and not arabic else "NR")
        else:
            resolved.append(kind)
            if kind in ("L", "R"):
                last_strong = kind
    # Neutrals: the direction on both sides when it agrees (numbers in R count as R), else the line's.
    n = len(parts)
    direction = ["L" if k == "L" else "R" if k in ("R", "NR") else None for k in resolved]
    k = 0
    while k < n:
        if direction[k] is not None:
            k += 1
            continue
        end = k
        while end < n and direction[end] is None:
            end += 1
        before = direction[k - 1] if k > 0 else ("R" if base else "L")
        after = direction[end] if end < n else ("R" if base else "L")
        fill = before if before == after else ("R" if base else "L")
        for j in range(k, end):
            direction[j] = fill
        k = end
    levels = []
    for kind, d in zip(resolved, direction, strict=True):
        if kind == "NR":
            levels.append(2)
        elif d == "R":
            levels.append(1)
        else:
            levels.append(2 if base else 0)
    j = n - 1
    while j >= 0 and parts[j].isspace():  # trailing spaces sit at the line's own level
        levels[j] = base
        j -= 1
    return levels


def visual_order(levels: Sequence[int]) -> list[int]:
    """Indexes in display order, left to right: from the highest level down to the lowest odd
    one, every stretch at that level or above is reversed."""
    order = list(range(len(levels)))
    if not levels:
        return order
    highest = max(levels)
    lowest_odd = min((lv for lv in levels if lv % 2), default=highest + 1)
    for level in range(highest, lowest_odd - 1, -1):
        k = 0
        while k < len(order):
            if levels[order[k]] >= level:
                end = k
                while end < len(order) and levels[order[end]] >= level:
                    end += 1
                order[k:end] = reversed(order[k:end])
                k = end
            else:
                k += 1
    return order
