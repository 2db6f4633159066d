"""A template is a value: an image source plus the boxes its text goes in.

The catalog builds templates from its file (`common/catalog.py`); `Template.from_image_bytes` builds
one from a picture a user sent. Everything downstream (the service, the renderer, storage, 🔁)
takes the value and never asks where it came from, except through `template.image`:
- `CatalogImage`: a bare file name inside the configured template-images folder;
- `ImageBytes`: the picture itself, identified by its SHA-256 (so equal pictures are one template,
  cached once and stored once).
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import unicodedata
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

# A bare file name: no folders, no "..", so the image path cannot leave the images folder.
IMAGE_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.(?:jpg|jpeg|png)")
# The key of a user's picture: a catalog slug is kebab-case, so ":" can never clash with one.
UPLOAD_PREFIX = "upload:"
ORIENTATION = 0x0112  # the EXIF tag a camera sets when the photo was taken turned
TURNED = (5, 6, 7, 8)  # orientations whose upright picture swaps width and height
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
MAX_UPLOAD_BYTES = 10 * 2**20  # Telegram's own limit for photos sent as photos
MAX_UPLOAD_PIXELS = 40_000_000  # beyond this a picture is a decompression bomb, not a meme
MIN_UPLOAD_SIDE = 32


class ImageError(ValueError):
    """A picture a user sent cannot be a template; the message says what to send instead."""


# A word of a set phrase: letters and digits of any script, with inner apostrophes ("that's").
PHRASE_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def phrase_words(text: str) -> list[str]:
    """A text's words for matching set phrases: lowercased, typographic apostrophes made plain,
    PHRASE_WORD runs (`|` and punctuation only separate)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    return PHRASE_WORD.findall(text)


def split_ending(text: str, phrase: str) -> tuple[str, str] | None:
    """(what comes before, the phrase as typed) when `text` ends with `phrase`, word for word
    (see phrase_words; what follows its last word, such as "!", stays with it); else None.
    "i ate it | but that’s none of my business!" -> ("i ate it", "but that’s none of my business!")."""
    ending = phrase_words(phrase)
    folded = text.lower().replace("\u2019", "'")
    if not ending or len(folded) != len(text):  # a letter whose lower case is longer: no match by position
        return None
    found = list(PHRASE_WORD.finditer(folded))
    if len(found) < len(ending) or [m.group() for m in found[-len(ending) :]] != ending:
        return None
    cut = found[-len(ending)].start()
    return text[:cut].rstrip(" |"), text[cut:].strip()


@dataclass(frozen=True)
class Box:
    """Where one caption goes: a rectangle in fractions of the image size, and its text style."""

    x: float  # top-left corner and size, fractions of image width/height
    y: float
    w: float
    h: float
    align: str = "center"  # left | center | right
    color: str = "#ffffff"  # text fill
    outline: str = "#000000"  # outline colour; "" = none
    angle: float = 0.0  # degrees, counter-clockwise, rotation about the box centre
    uppercase: bool = True  # the layout's case style


# A picture of one's own gets the classic layout: a line across the top, a line across the
# bottom, each as tall as a fifth of the picture's width would make it (text size follows the
# width), within these bounds of the picture's height.
BOX_HEIGHT_PER_WIDTH = 0.22
MIN_BOX_HEIGHT, MAX_BOX_HEIGHT = 0.12, 0.3
# Past these width/height ratios two lines on the picture would be slivers (a panorama) or lost
# in it (a long screenshot): the caption goes in a white band above the picture instead.
WIDE, TALL = 2.2, 1 / 2.2
BAND_HEIGHT_PER_WIDTH = {"wide": 0.16, "tall": 0.45}  # the band's height, as a fraction of the width


@dataclass(frozen=True)
class Layout:
    boxes: tuple[Box, ...]
    band: float = 0.0  # a white band above the picture, as a fraction of the whole canvas's height


def classic_layout(width: int, height: int) -> Layout:
    """Where text goes on a picture of this size: top and bottom lines, or a band above it."""
    ratio = width / height
    if TALL <= ratio <= WIDE:
        h = min(MAX_BOX_HEIGHT, max(MIN_BOX_HEIGHT, BOX_HEIGHT_PER_WIDTH * ratio))
        return Layout((Box(x=0.03, y=0.02, w=0.94, h=h), Box(x=0.03, y=0.98 - h, w=0.94, h=h)))
    band_px = BAND_HEIGHT_PER_WIDTH["wide" if ratio > WIDE else "tall"] * width
    band = band_px / (band_px + height)
    # Black on white, as typed: the band is the modern caption style, not the impact one.
    text = Box(x=0.04, y=band * 0.08, w=0.92, h=band * 0.84, color="#000000", outline="", uppercase=False)
    return Layout((text,), band)


@dataclass(frozen=True)
class CatalogImage:
    """A catalog template's blank image: a file in the template-images folder."""

    file: str

    def __post_init__(self) -> None:
        if not IMAGE_FILE_RE.fullmatch(self.file):
            raise ValueError(f"image {self.file!r} is not a bare .jpg/.png file name")


@dataclass(frozen=True)
class ImageBytes:
    """A picture held in memory (a user's upload). Compared and hashed by digest only, so a
    cache keyed by it never hashes megabytes."""

    digest: str  # SHA-256 of data, hex
    data: bytes = field(repr=False, compare=False)

    @classmethod
    def of(cls, data: bytes) -> ImageBytes:
        return cls(digest=hashlib.sha256(data).hexdigest(), data=bytes(data))


ImageSource = CatalogImage | ImageBytes


@dataclass(frozen=True)
class Template:
    slug: str  # the key memes are stored under: kebab-case for the catalog, "upload:<sha256>" for a picture
    name: str  # display name, "Change My Mind"
    imgflip_id: int  # 0 for a user's picture
    dataset_name: str  # the model's template key, e.g. "Change-My-Mind"; "" = none (captions unconditioned)
    image: ImageSource
    width: int  # image size in px
    height: int
    aliases: tuple[str, ...]
    has_data: bool  # caption data exists in the dataset
    boxes: tuple[Box, ...]
    band: float = 0.0  # a white band above the image, a fraction of the canvas height (Layout.band)
    # A template without caption data (twelve of the catalog's, among them the best known) would
    # get the model's captions for no template at all: a Doge or That Would Be Great caption on
    # Distracted Boyfriend, two of its three labels empty. The catalog says instead how it is
    # captioned (data/templates.toml):
    caption_like: str = ""  # a template with data whose captions have this one's shape
    caption_boxes: tuple[int, ...] = ()  # our box k shows caption_like's box caption_boxes[k] (from 1)
    openings: tuple[str, ...] = ()  # the set phrase a caption starts with, before the user's words
    closing: str = (
        ""  # the set phrase of the last box ("but that's none of my business"): the model writes the rest
    )

    @property
    def is_upload(self) -> bool:
        return isinstance(self.image, ImageBytes)

    def caption_plan(self, prefix: str, rng: random.Random) -> CaptionPlan:
        """What the model is asked for to caption this template from the user's `prefix`.
        A template with data: itself and the prefix. One without: conditioned as its
        `caption_like`, started with one of its `openings` (before the user's words, unless they
        typed it themselves or laid out every box), and ended with its `closing` unless the
        words reach the last box. The user's own words are in this template's box order, so a
        `caption_boxes` reordering applies only when they typed none; otherwise the model
        writes for no template."""
        fill = not self.has_data
        if self.has_data or not (self.caption_like or self.openings or self.closing):
            return CaptionPlan(self.dataset_name, prefix, fill_boxes=fill)
        if self.caption_boxes:
            if prefix.strip():
                return CaptionPlan(self.dataset_name, prefix, fill_boxes=fill)
            return CaptionPlan(
                self.caption_like or self.dataset_name, prefix, self.caption_boxes, self.closing, fill
            )
        prefix = self._opening(prefix, rng) + prefix
        typed = split_ending(prefix, self.closing) if self.closing else None
        if typed is not None and typed[0].count("|") < len(self.boxes) - 1:
            # They typed the phrase themselves: it is the last box, as typed, after their words.
            return CaptionPlan(
                self.caption_like or self.dataset_name, typed[0], closing=typed[1], fill_boxes=fill
            )
        closing = self.closing if prefix.count("|") < len(self.boxes) - 1 else ""
        return CaptionPlan(self.caption_like or self.dataset_name, prefix, closing=closing, fill_boxes=fill)

    def _opening(self, prefix: str, rng: random.Random) -> str:
        """One of the openings to put before the user's words: "" when there is none, when they
        start with one already ("one does not simply walk"), or when it would need a box more
        than the template has."""
        said = phrase_words(prefix)
        fitting = [o for o in self.openings if o.count("|") + prefix.count("|") < len(self.boxes)]
        if not fitting or any(said[: len(w)] == w for w in map(phrase_words, self.openings)):
            return ""
        return rng.choice(fitting)

    @classmethod
    def from_image_bytes(
        cls, data: bytes, *, name: str = "Your picture", layout: Layout | None = None
    ) -> Template:
        """A template from a picture's bytes (JPEG, PNG, WebP, GIF's first frame, BMP), with the
        classic layout for its shape unless `layout` is given; raises ImageError, worded for the
        user, for anything else. width and height are the canvas's: the picture turned upright
        (EXIF), plus the band above it."""
        if len(data) > MAX_UPLOAD_BYTES:
            raise ImageError(too_big(len(data)))
        width, height = _checked_size(data)
        layout = layout or classic_layout(width, height)
        if not layout.boxes:
            raise ValueError("a template needs at least one box")
        height = round(height / (1 - layout.band))
        image = ImageBytes.of(data)
        return cls(
            slug=UPLOAD_PREFIX + image.digest,
            name=name,
            imgflip_id=0,
            dataset_name="",
            image=image,
            width=width,
            height=height,
            aliases=(),
            has_data=False,
            boxes=layout.boxes,
            band=layout.band,
        )


@dataclass(frozen=True)
class CaptionPlan:
    """A template's caption as the model is asked for it (Template.caption_plan)."""

    model_template: str  # the dataset template the model is conditioned on ("" or unknown: none)
    prefix: str  # what the model continues: the user's words, or the template's opening
    order: tuple[int, ...] = ()  # box k of the meme shows the model's box order[k] (from 1); () = as written
    closing: str = ""  # the meme's last box, written by no model
    # The model must write every one of its boxes (GenerationRequest.fill_boxes): a picture's
    # two lines, or a template without captions of its own, each box a part of its joke. With no
    # captions of the template to go by the model often stops early: the best of 8 left a line
    # empty in 37 of 60 picture memes.
    fill_boxes: bool = False

    def model_boxes(self, n_boxes: int) -> int:
        """Boxes the model writes for a meme of n_boxes."""
        return n_boxes - 1 if self.closing else n_boxes

    def arrange(self, boxes: list[str]) -> list[str]:
        """The model's boxes in the meme's order, its closing box last."""
        ordered = [boxes[i - 1] if i <= len(boxes) else "" for i in self.order] if self.order else list(boxes)
        return [*ordered, self.closing] if self.closing else ordered


def too_big(n_bytes: int) -> str:
    """The refusal for a picture of n_bytes over MAX_UPLOAD_BYTES (a front end may know the size
    before downloading it)."""
    return f"That picture is {n_bytes / 2**20:.1f} MB; send one under {MAX_UPLOAD_BYTES // 2**20} MB."


def is_upload_key(slug: str) -> bool:
    return slug.startswith(UPLOAD_PREFIX)


def _checked_size(data: bytes) -> tuple[int, int]:
    unreadable = ImageError("That file isn't a picture I can read: send a JPEG, PNG or WebP image.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in UPLOAD_FORMATS:
                raise unreadable
            width, height = image.size
            if width * height > MAX_UPLOAD_PIXELS:
                raise ImageError(
                    f"That picture is {width}×{height} pixels; send one under {MAX_UPLOAD_PIXELS // 10**6} megapixels."
                )
            if image.getexif().get(ORIENTATION, 1) in TURNED:  # drawn upright: the sides swap
                width, height = height, width
            # Decoded once here (a JPEG at a reduced scale: cheap), so a truncated or corrupt
            # file is refused now, in words, not when the meme is drawn.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        Image.DecompressionBombError,
    ) as exc:
        if isinstance(exc, ImageError):
            raise
        if isinstance(exc, Image.DecompressionBombError):  # Pillow's own guard, past twice its limit
            raise ImageError(
                f"That picture is too large: send one under {MAX_UPLOAD_PIXELS // 10**6} megapixels."
            ) from None
        raise unreadable from None
    if min(width, height) < MIN_UPLOAD_SIDE:
        raise ImageError(
            f"That picture is {width}×{height} pixels: too small for text. Send one at least "
            f"{MIN_UPLOAD_SIDE} pixels on each side."
        )
    return width, height
