"""The meme renderer: a template (a catalog image or a user's picture) plus box texts in, encoded image bytes out.

Classic meme style: Anton, white with a black outline that scales with the font size,
upper-cased where the layout says so, each text fitted to its box (see textfit.py).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageColor, ImageDraw, ImageOps, UnidentifiedImageError

from bot.fonts import FontSet, Run, anton_font, find_fallback_fonts
from bot.graphemes import upper_cased
from bot.textfit import FittedText, clean_caption, fit_text, tidy_whitespace
from common.template import ORIENTATION, TURNED, CatalogImage, ImageSource

if TYPE_CHECKING:
    from common.template import Box, Template

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


class TooManyBoxes(RenderError):
    """More texts than the template has boxes: nothing is merged, the user is told the count."""


@dataclass(frozen=True)
class RenderedMeme:
    data: bytes
    format: str  # "png" | "jpeg"
    width: int
    height: int
    # Characters (clusters) of the texts that no installed font has: drawn as a replacement
    # mark, and to be named in the reply (see `missing_note`).
    missing: tuple[str, ...] = ()

    @property
    def mime(self) -> str:
        return f"image/{self.format}"

    @property
    def extension(self) -> str:
        """File suffix with its dot, e.g. ".png"."""
        return ".jpg" if self.format == "jpeg" else f".{self.format}"


@dataclass(frozen=True)
class _Placed:
    x: float
    baseline: float
    run: Run


def box_count_error(template: Template, given: int, separator: str = "") -> str | None:
    """What to tell a user who gave `given` box texts, when the template has fewer boxes; else None."""
    n = len(template.boxes)
    if given <= n:
        return None
    boxes = "one text box" if n == 1 else f"{n} text boxes"
    how = f" (boxes are separated by {separator})" if separator else ""
    return (
        f"{template.name} has {boxes}, and you gave {given}{how}. Put that text into "
        f"{'it' if n == 1 else 'at most ' + str(n)}, or pick a template with more boxes."
    )


def assign_texts(texts: Sequence[str], n_boxes: int, template: Template | None = None) -> list[str]:
    """One text per box, in order; missing ones stay empty. More texts than boxes (empty ones at
    the end aside) raise TooManyBoxes: a text is never merged into another box."""
    if isinstance(texts, str):  # a lone string would otherwise be spread one character per box
        texts = [texts]
    texts = list(texts)
    while len(texts) > max(0, n_boxes) and not texts[-1].strip():
        texts.pop()
    if len(texts) > n_boxes:
        message = box_count_error(template, len(texts)) if template is not None else None
        raise TooManyBoxes(message or f"{len(texts)} texts for {n_boxes} boxes")
    return texts + [""] * (n_boxes - len(texts))


def missing_note(missing: Sequence[str]) -> str:
    """One line for the reply naming the characters no font here could draw (\"\" if none)."""
    if not missing:
        return ""
    shown = ", ".join(f"{c} ({' '.join(f'U+{ord(x):04X}' for x in c)})" for c in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return (
        f"Couldn't draw {shown}{more}: no font on this server has "
        f"{'it' if len(missing) == 1 else 'them'}, so the meme shows \ufffd instead."
    )


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


def _scaled(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _flattened(image: Image.Image) -> Image.Image:
    """RGB; a transparent picture (a PNG or a sticker a user sent) on white, not on black."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


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

    def _load_base_image(self, source: ImageSource, band: float) -> Image.Image:
        """The template image decoded, below a white band of `band` (a fraction of the whole
        height) if any, scaled down to max_side; never modified afterwards."""
        if isinstance(source, CatalogImage):
            path = self.images_dir / source.file  # a bare file name (checked): never outside images_dir
            try:
                data = self._read_bytes(path)
            except FileNotFoundError as exc:
                raise TemplateImageMissing(
                    f"template image {path} not found: check [paths] template_images in your config"
                ) from exc
            where = f"template image {path}"
        else:
            data, where = source.data, f"picture {source.digest[:12]}"
        try:
            image = Image.open(io.BytesIO(data))
            size = _scaled(image.size, self.max_side)  # from the full size: a draft's halving rounds
            image.draft("RGB", size)  # JPEG: decode at a reduced scale directly, much faster
            if image.getexif().get(ORIENTATION, 1) in TURNED:  # a phone photo taken upright
                size = (size[1], size[0])
            image = _flattened(ImageOps.exif_transpose(image))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise RenderError(f"{where} is not a readable image: {exc}") from exc
        if band > 0:
            canvas = Image.new("RGB", (image.width, round(image.height / (1 - band))), (255, 255, 255))
            canvas.paste(image, (0, canvas.height - image.height))
            image, size = canvas, _scaled(canvas.size, self.max_side)
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        return image

    def render(
        self, template: Template, texts: Sequence[str], *, uppercase: bool | None = None
    ) -> RenderedMeme:
        """The meme as PNG or JPEG bytes. `uppercase=False` keeps the texts as typed."""
        assigned = assign_texts(texts, len(template.boxes), template)
        image = self._base_image(template.image, template.band).copy()
        upper = self.uppercase if uppercase is None else uppercase
        missing: list[str] = []
        for box, text in zip(template.boxes, assigned, strict=True):
            cased = self._cased(text, upper and box.uppercase)
            missing += self.fonts.undrawable(cased)
            self._draw_box(image, template, box, tidy_whitespace(self.fonts.drawable(cased)))
        meme = encode(image)
        if missing:
            meme = dataclasses.replace(meme, missing=tuple(dict.fromkeys(missing)))
        return meme

    @staticmethod
    def _cased(text: str, uppercase: bool) -> str:
        text = clean_caption(text)
        return upper_cased(text) if uppercase else text

    def prepare(self, text: str, uppercase: bool) -> str:
        """`text` as it will be drawn: cleaned, cased, with a visible mark for characters no font has."""
        return tidy_whitespace(self.fonts.drawable(self._cased(text, uppercase)))

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
            placed = self._place(fitted, box, left, top, width, height, image.size)
            self._draw_runs(image, placed, fitted, fill, outline)
            return
        # Rotated text: draw the box upright on a transparent layer, turn it, lay it on.
        layer = Image.new("RGBA", (math.ceil(width), math.ceil(height)), (0, 0, 0, 0))
        placed = self._place(fitted, box, 0.0, 0.0, width, height, image.size)
        self._draw_runs(layer, placed, fitted, fill, outline)
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
    ) -> list[_Placed]:
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
            line_w = sum(run.width for run in pieces)
            if box.align == "left":
                x = left + pad + fitted.stroke
            elif box.align == "right":
                x = left + width - pad - fitted.stroke - line_w
            else:
                x = left + (width - line_w) / 2
            for run in pieces:
                runs.append(_Placed(x, baseline, run))
                x += run.width
        return runs

    def _draw_runs(
        self,
        image: Image.Image,
        placed: list[_Placed],
        fitted: FittedText,
        fill: tuple[int, ...],
        outline: tuple[int, ...],
    ) -> None:
        """All outlines first, then all fills: an outline never covers a neighbouring letter or line.
        Colour glyphs (emoji) are pictures: their outline is their shape grown by the stroke."""
        draw = ImageDraw.Draw(image)
        stroke = fitted.stroke
        pictures = {id(p): self.fonts.picture(p.run, fitted.size, stroke) for p in placed if p.run.colour}
        if stroke:
            for p in placed:
                if p.run.colour:
                    _, mask, dx, dy = pictures[id(p)]
                    if mask is not None:
                        corner = (round(p.x) + dx - stroke, round(p.baseline) + dy - stroke)
                        image.paste(
                            Image.new(image.mode, mask.size, _paint(outline, image.mode)), corner, mask
                        )
                    continue
                draw.text(
                    (p.x, p.baseline),
                    p.run.text,
                    font=p.run.font,
                    fill=outline,
                    anchor="ls",
                    direction=p.run.direction,
                    stroke_width=stroke,
                    stroke_fill=outline,
                )
        for p in placed:
            if p.run.colour:
                picture, _, dx, dy = pictures[id(p)]
                corner = (round(p.x) + dx, round(p.baseline) + dy)
                if image.mode == "RGBA":
                    image.alpha_composite(picture, (max(0, corner[0]), max(0, corner[1])))
                else:
                    image.paste(picture, corner, picture)
                continue
            draw.text(
                (p.x, p.baseline),
                p.run.text,
                font=p.run.font,
                fill=fill,
                anchor="ls",
                direction=p.run.direction,
            )


def _paint(colour: tuple[int, ...], mode: str) -> tuple[int, ...]:
    """`colour` as a fill for an image of `mode` (an outline on a transparent layer is opaque)."""
    if mode == "RGBA":
        return (*colour[:3], 255)
    return colour[:3]
