"""Fonts for captions: Anton from its package, fallbacks for the characters Anton lacks.

Every character is drawn with the first font whose character map has it; characters no
font has are dropped before layout, so a caption never shows a tofu box.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import itertools
import math
import shutil
import subprocess
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fontTools.ttLib import TTFont
from PIL import ImageFont

ANTON_PACKAGE = "fontpkg_anton"
ANTON_FILE = "files/Anton-Regular.ttf"

# Debian's places for fonts that cover what Anton lacks (fonts-noto-core, fonts-noto-cjk,
# fonts-dejavu-core): used when fontconfig is not there to tell us.
KNOWN_FALLBACKS = (
    Path("/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf"),
    Path("/usr/share/fonts/truetype/noto/NotoSansArabic-Bold.ttf"),
    Path("/usr/share/fonts/truetype/noto/NotoSansHebrew-Bold.ttf"),
    Path("/usr/share/fonts/truetype/noto/NotoSansDevanagari-Bold.ttf"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
)

# Any size FreeType renders: a font that fails here (e.g. a colour-bitmap emoji font that
# only comes in one size) cannot be scaled to fit a box, so it is not used.
PROBE_SIZE = 20

# Characters that take no ink but must stay in the text.
WHITESPACE = frozenset(" \n")

# Glyph extents are measured once at this size and scaled: laying out one caption tries
# a dozen sizes, and measuring each line's ink at each of them dominated the render time.
REFERENCE_SIZE = 200


class FontError(RuntimeError):
    """The meme font is missing or unreadable; the message says what to install."""


@dataclass(frozen=True)
class FontFile:
    path: Path
    index: int = 0  # face index inside a .ttc collection


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
    """Fallback fonts in the order they are tried: configured paths, fontconfig, known paths."""
    candidates = [FontFile(Path(p)) for p in configured]
    if use_fontconfig:
        candidates += fontconfig_fallbacks()
    candidates += [FontFile(p) for p in KNOWN_FALLBACKS]
    seen: set[FontFile] = set()
    found = []
    for font in candidates:
        if font not in seen and font.path.is_file():
            seen.add(font)
            found.append(font)
    return tuple(found)


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
        self._coverage = functools.lru_cache(maxsize=None)(self._load_coverage)
        self.font = functools.lru_cache(maxsize=512)(self._load_font)
        self.font_for = functools.lru_cache(maxsize=8192)(self._find_font_for)
        self._glyph_extent = functools.lru_cache(maxsize=4096)(self._measure_glyph_extent)
        if not self._coverage(0):
            raise FontError(f"cannot read the meme font {primary.path}: reinstall fontpkg-anton")
        # Characters whose ink can be predicted one glyph at a time: the primary font's,
        # less combining marks (they stack on their neighbours).
        self._simple = frozenset(c for c in self._coverage(0) if not unicodedata.combining(chr(c)))

    def _load_data(self, i: int) -> bytes:
        return self._read_bytes(self.files[i].path)

    def _load_coverage(self, i: int) -> frozenset[int]:
        """Code points font `i` has glyphs for; empty if the font is unreadable or unscalable."""
        try:
            data = self._data(i)
            ImageFont.truetype(io.BytesIO(data), PROBE_SIZE, index=self.files[i].index)
            with TTFont(io.BytesIO(data), fontNumber=self.files[i].index, lazy=True) as tt:
                cmap = tt.getBestCmap() or {}
        except Exception:  # any broken font file just covers nothing
            return frozenset()
        return frozenset(cmap)

    def _load_font(self, i: int, size: int) -> ImageFont.FreeTypeFont:
        # BytesIO.read() hands back the cached bytes object itself, so every size of a font
        # shares one copy of the file in memory.
        return ImageFont.truetype(io.BytesIO(self._data(i)), size, index=self.files[i].index)

    def _find_font_for(self, char: str) -> int | None:
        """Index of the first font that has `char`, or None when none has it."""
        code = ord(char)
        for i in range(len(self.files)):
            if code in self._coverage(i):
                return i
        return None

    def drawable(self, text: str) -> str:
        """`text` without the characters no font can draw."""
        if self._coverage(0).issuperset(map(ord, text)):
            return text
        return "".join(c for c in text if c in WHITESPACE or self.font_for(c) is not None)

    def runs(self, line: str, size: int) -> list[tuple[ImageFont.FreeTypeFont, str]]:
        """`line` (drawable, no newline) split into runs that share a font."""
        if self._coverage(0).issuperset(map(ord, line)):
            return [(self.font(0, size), line)] if line else []
        # Spaces stay with the run before them so a fallback phrase is not split at each space.
        indexes = []
        current = 0
        for c in line:
            if c != " ":
                found = self.font_for(c)
                current = 0 if found is None else found
            indexes.append(current)
        runs = []
        pos = 0
        for i, group in itertools.groupby(indexes):
            n = len(list(group))
            runs.append((self.font(i, size), line[pos : pos + n]))
            pos += n
        return runs

    def width(self, line: str, size: int) -> float:
        """Advance width of `line` at `size` px."""
        return sum(font.getlength(chunk) for font, chunk in self.runs(line, size))

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
        for font, chunk in self.runs(line, size):
            if chunk.strip():
                _, t, _, b = font.getbbox(chunk, anchor="ls")
                top, bottom = min(top, t), max(bottom, b)
        return top, bottom
