"""A template argument on the command line: a catalog name, or the path of a picture file."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from bot.recognize import TemplateRecognizer
from common.catalog import Catalog
from common.template import MAX_UPLOAD_BYTES, ImageError, Template, too_big

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")


@dataclass(frozen=True)
class Chosen:
    template: Template
    recognized: bool = False  # the picture is this catalog template
    file_stem: str = ""  # for a picture: its file's name, to name the output after

    @property
    def label(self) -> str:
        return self.file_stem or self.template.slug


def template_argument(
    text: str, catalog: Catalog, images_dir: Path | None = None, cache_dir: Path | None = None
) -> Chosen:
    """`text` as a template: a picture file if one is there (ImageError if it can't be one) --
    the catalog template it shows when `images_dir` is given and it is recognised -- else a
    catalog name (UnknownTemplate)."""
    path = Path(text).expanduser()
    if not path.is_file():
        if "/" in text or path.suffix.lower() in PICTURE_SUFFIXES:  # meant as a file, not a name
            raise ImageError(f"there is no picture file at {path}")
        return Chosen(catalog.lookup(text))
    try:
        size = path.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise ImageError(too_big(size))
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    picture = Template.from_image_bytes(data, name=path.name)
    if images_dir is not None:
        recognizer = TemplateRecognizer.build(catalog, images_dir, cache_dir)
        with Image.open(io.BytesIO(data)) as image:  # readable: from_image_bytes checked it
            recognition = recognizer.recognize(ImageOps.exif_transpose(image).convert("RGB"))
        if recognition is not None:
            return Chosen(recognition.template, recognized=True, file_stem=path.stem)
    return Chosen(picture, file_stem=path.stem)
