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
import re
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

# A bare file name: no folders, no "..", so the image path cannot leave the images folder.
IMAGE_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.(?:jpg|jpeg|png)")
# The key of a user's picture: a catalog slug is kebab-case, so ":" can never clash with one.
UPLOAD_PREFIX = "upload:"
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
MAX_UPLOAD_BYTES = 10 * 2**20  # Telegram's own limit for photos sent as photos
MAX_UPLOAD_PIXELS = 50_000_000  # beyond this a picture is a decompression bomb, not a meme
MIN_UPLOAD_SIDE = 32


class ImageError(ValueError):
    """A picture a user sent cannot be a template; the message says what to send instead."""


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


# The classic layout for a picture of one's own: a line across the top, a line across the bottom.
TOP_AND_BOTTOM = (Box(x=0.03, y=0.02, w=0.94, h=0.22), Box(x=0.03, y=0.76, w=0.94, h=0.22))


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

    @property
    def is_upload(self) -> bool:
        return isinstance(self.image, ImageBytes)

    @classmethod
    def from_image_bytes(
        cls, data: bytes, *, name: str = "Your picture", boxes: tuple[Box, ...] = TOP_AND_BOTTOM
    ) -> Template:
        """A template from a picture's bytes (JPEG, PNG, WebP, GIF's first frame, BMP); raises
        ImageError, worded for the user, for anything else."""
        if len(data) > MAX_UPLOAD_BYTES:
            raise ImageError(
                f"That picture is {len(data) / 2**20:.1f} MB; send one under {MAX_UPLOAD_BYTES // 2**20} MB."
            )
        width, height = _checked_size(data)
        if not boxes:
            raise ValueError("a template needs at least one box")
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
            boxes=tuple(boxes),
        )


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
            image.verify()  # a truncated or corrupt file fails here, not mid-render
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise unreadable from None
    if min(width, height) < MIN_UPLOAD_SIDE:
        raise ImageError(
            f"That picture is {width}×{height} pixels: too small for text. Send one at least "
            f"{MIN_UPLOAD_SIDE} pixels on each side."
        )
    return width, height
