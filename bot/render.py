"""The meme renderer: a catalog template plus box texts in, encoded image bytes out.

Classic meme style: Anton, white with a black outline that scales with the font size,
upper-cased where the layout says so, each text fitted to its box (see textfit.py).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageColor, ImageDraw, ImageFont, UnidentifiedImageError

from bot.fonts import FontSet, anton_font, find_fallback_fonts
from bot.textfit import FittedText, clean_caption, fit_text, tidy_whitespace

if TYPE_CHECKING:
    from bot.catalog import Box, Template

# Templates are photos: above this many pixels (~320 x 320) they go out as JPEG. A PNG of
# a 480 x 360 photo meme is ~4x the bytes and ~20x the encoding time (25 ms vs 1 ms here)
# for no visible gain; small images stay PNG, where the outline's crispness shows most.
JPEG_MIN_PIXELS = 100_000
JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 1  # zlib's fastest level: level 6 takes ~3x longer for a few % smaller photos
TEMPLATE_CACHE_SIZE = 32  # decoded templates kept (~0.5-2 MB each at max_side 800)

# Sizes relative to the image's short side, so a meme looks the same at any max_side.
BOX_PADDING = 0.012  # gap between a box's edge and its text
BOX_PADDING_MAX = 0.06  # ... but at most this much of the box's smaller side
MIN_FONT = 0.022  # below this size text wraps harder, then is cut with an ellipsis
MIN_FONT_PX = 10
MAX_FONT = 0.16  # a one-word caption in a big box stays a caption, not a poster
# A strip this close to the top/bottom edge and at most this tall holds its text against
# that edge, like classic top/bottom text; other boxes (panels, signs) centre it.
EDGE = 0.04
EDGE_STRIP = 0.34


class RenderError(Exception):
    """A meme could not be rendered; the message says what to fix."""


class TemplateImageMissing(RenderError, FileNotFoundError):
    pass


@dataclass(frozen=True)
class RenderedMeme:
    data: bytes
    format: str  # "png" | "jpeg"
    width: int
    height: int

    @property
    def mime(self) -> str:
        return f"image/{self.format}"

    @property
    def extension(self) -> str:
        """File suffix with its dot, e.g. ".png"."""
        return ".jpg" if self.format == "jpeg" else f".{self.format}"


@dataclass(frozen=True)
class _Run:
    x: float
    baseline: float
    font: ImageFont.FreeTypeFont
    text: str


def assign_texts(texts: Sequence[str], n_boxes: int) -> list[str]:
    """One text per box: extra texts join the last box on new lines; missing ones stay empty."""
    if isinstance(texts, str):  # a lone string would otherwise be spread one character per box
        texts = [texts]
    texts = list(texts)
    if n_boxes <= 0:
        return []
    if len(texts) > n_boxes:
        texts[n_boxes - 1 :] = ["\n".join(texts[n_boxes - 1 :])]
    return texts + [""] * (n_boxes - len(texts))


def encode(image: Image.Image) -> RenderedMeme:
    buffer = io.BytesIO()
    if image.width * image.height > JPEG_MIN_PIXELS:
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
        fmt = "jpeg"
    else:
        image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
        fmt = "png"
    return RenderedMeme(data=buffer.getvalue(), format=fmt, width=image.width, height=image.height)


def _padding(box: Box, image_size: tuple[int, int]) -> int:
    """Gap inside the box edges, px: a small box must not lose a quarter of itself to padding."""
    width, height = image_size
    box_side = min(box.w * width, box.h * height)
    return max(1, round(min(min(image_size) * BOX_PADDING, box_side * BOX_PADDING_MAX)))


def _colour(value: str, template: Template) -> tuple[int, ...]:
    try:
        return ImageColor.getrgb(value)
    except ValueError as exc:
        raise RenderError(f"template {template.slug}: {value!r} is not a colour (use e.g. #ffffff)") from exc


class Renderer:
    """Renders memes; thread-safe (render() runs in worker threads via asyncio.to_thread).

    Fonts and decoded, downscaled template images are cached per instance, so rendering
    the same template again reads no files.
    """

    def __init__(
        self,
        images_dir: Path,
        *,
        max_side: int = 800,
        fallback_fonts: Sequence[Path] = (),
        uppercase: bool = True,
    ) -> None:
        if max_side < 1:
            raise ValueError(f"max_side must be at least 1 px, got {max_side}")
        self.images_dir = Path(images_dir)
        self.max_side = max_side
        self.uppercase = uppercase
        self.fonts = FontSet(anton_font(), find_fallback_fonts(fallback_fonts), read_bytes=self._read_bytes)
        self._base_image = functools.lru_cache(maxsize=TEMPLATE_CACHE_SIZE)(self._load_base_image)

    def _read_bytes(self, path: Path) -> bytes:
        """Every file the renderer reads comes through here."""
        return path.read_bytes()

    def _load_base_image(self, path: Path) -> Image.Image:
        """The template image decoded and scaled down to max_side; never modified afterwards."""
        try:
            data = self._read_bytes(path)
        except FileNotFoundError as exc:
            raise TemplateImageMissing(
                f"template image {path} not found: check [paths] template_images in your config"
            ) from exc
        try:
            image = Image.open(io.BytesIO(data))
            scale = min(1.0, self.max_side / max(image.size))
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image.draft("RGB", size)  # JPEG: decode at a reduced scale directly, much faster
            image = image.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise RenderError(f"template image {path} is not a readable image: {exc}") from exc
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        return image

    def render(
        self, template: Template, texts: Sequence[str], *, uppercase: bool | None = None
    ) -> RenderedMeme:
        """The meme as PNG or JPEG bytes. `uppercase=False` keeps the texts as typed."""
        if Path(template.image).name != template.image:  # the image must come from images_dir
            raise RenderError(f"template {template.slug}: image {template.image!r} is not a bare file name")
        image = self._base_image(self.images_dir / template.image).copy()
        upper = self.uppercase if uppercase is None else uppercase
        for box, text in zip(template.boxes, assign_texts(texts, len(template.boxes)), strict=True):
            self._draw_box(image, template, box, self.prepare(text, upper and box.uppercase))
        return encode(image)

    def prepare(self, text: str, uppercase: bool) -> str:
        """`text` as it will be drawn: cleaned, cased, without characters no font has."""
        text = clean_caption(text)
        if uppercase:
            text = text.upper()
        return tidy_whitespace(self.fonts.drawable(text))

    def fit(self, text: str, box: Box, image_size: tuple[int, int]) -> FittedText:
        """`text` (prepared) laid out for `box` on an image of `image_size`."""
        width, height = image_size
        short = min(width, height)
        pad = _padding(box, image_size)
        box_w, box_h = box.w * width - 2 * pad, box.h * height - 2 * pad
        max_size = min(int(box_h), max(MIN_FONT_PX, round(short * MAX_FONT)))
        min_size = max(MIN_FONT_PX, round(short * MIN_FONT))
        return fit_text(
            text, box_w, box_h, self.fonts, min_size=min_size, max_size=max_size, outline=bool(box.outline)
        )

    def _draw_box(self, image: Image.Image, template: Template, box: Box, text: str) -> None:
        if not text:
            return
        fitted = self.fit(text, box, image.size)
        if fitted.empty:
            return
        fill = _colour(box.color, template)
        outline = _colour(box.outline, template) if box.outline else fill
        left, top = box.x * image.width, box.y * image.height
        width, height = box.w * image.width, box.h * image.height
        if not box.angle:
            runs = self._place(fitted, box, left, top, width, height, image.size)
            _draw_runs(ImageDraw.Draw(image), runs, fitted.stroke, fill, outline)
            return
        # Rotated text: draw the box upright on a transparent layer, turn it, lay it on.
        layer = Image.new("RGBA", (math.ceil(width), math.ceil(height)), (0, 0, 0, 0))
        runs = self._place(fitted, box, 0.0, 0.0, width, height, image.size)
        _draw_runs(ImageDraw.Draw(layer), runs, fitted.stroke, fill, outline)
        turned = layer.rotate(box.angle, resample=Image.Resampling.BICUBIC, expand=True)
        centre_x, centre_y = left + width / 2, top + height / 2
        corner = (round(centre_x - turned.width / 2), round(centre_y - turned.height / 2))
        image.paste(turned, corner, turned)

    def _place(
        self,
        fitted: FittedText,
        box: Box,
        left: float,
        top: float,
        width: float,
        height: float,
        image_size: tuple[int, int],
    ) -> list[_Run]:
        """Where each run of each line goes, the box being at (left, top) with that size."""
        pad = _padding(box, image_size)
        inner_top, inner_h = top + pad, height - 2 * pad
        if box.y <= EDGE and box.h <= EDGE_STRIP:
            block_top = inner_top
        elif box.y + box.h >= 1 - EDGE and box.h <= EDGE_STRIP:
            block_top = inner_top + inner_h - fitted.height
        else:
            block_top = inner_top + (inner_h - fitted.height) / 2
        first_baseline = block_top + fitted.stroke - fitted.top
        runs = []
        for i, line in enumerate(fitted.lines):
            baseline = first_baseline + i * fitted.pitch
            pieces = self.fonts.runs(line, fitted.size)
            line_w = sum(font.getlength(chunk) for font, chunk in pieces)
            if box.align == "left":
                x = left + pad + fitted.stroke
            elif box.align == "right":
                x = left + width - pad - fitted.stroke - line_w
            else:
                x = left + (width - line_w) / 2
            for font, chunk in pieces:
                runs.append(_Run(x, baseline, font, chunk))
                x += font.getlength(chunk)
        return runs


def _draw_runs(
    draw: ImageDraw.ImageDraw, runs: list[_Run], stroke: int, fill: tuple[int, ...], outline: tuple[int, ...]
) -> None:
    # All outlines first, then all fills: an outline never covers a neighbouring letter or line.
    if stroke:
        for run in runs:
            draw.text(
                (run.x, run.baseline),
                run.text,
                font=run.font,
                fill=outline,
                anchor="ls",
                stroke_width=stroke,
                stroke_fill=outline,
            )
    for run in runs:
        draw.text((run.x, run.baseline), run.text, font=run.font, fill=fill, anchor="ls")
