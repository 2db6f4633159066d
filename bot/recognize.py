"""Recognising a catalog template in a picture a user sent: re-encoded, resized, slightly cropped
or turned, or with someone's old caption on it.

A picture is summed up by perceptual hashes from `imagehash` (a fingerprint): the DCT hash and
the horizontal and vertical difference hashes of the whole picture and of its middle (where
crops, turned corners, borders and captions change least), and a colour hash, which tells a
white chart from a white template. Two pictures are as far apart as the mean fraction of bits
their seven hashes differ in: 0 for the same picture, about 0.5 for unrelated ones. A template
is recognised when it is the nearest by a clear margin, close enough, and about the same shape.
`python bench/recognition.py` measures it (100 templates x 5 distortions, 300 unrelated
pictures); the thresholds below say why they are what they are.

The index (one fingerprint per template image) takes about a second to build from the images;
`build` keeps it in a cache file, keyed by each image's SHA-256, so a changed or new image is
hashed again and the rest are read back. A `TemplateRecognizer` never changes once built, so
worker threads may call `recognize` at once (the service does, via asyncio.to_thread).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from common.catalog import Catalog
from common.template import CatalogImage, Template

logger = logging.getLogger(__name__)

# Bumped whenever the fingerprint changes (hashes, sizes, the preparation below): a cache written
# by another version is then ignored and rebuilt.
FINGERPRINT_VERSION = 1
CACHE_FILE = "template-fingerprints.json"

# Pictures are reduced to this long side before hashing. Every hash looks at 32 px or fewer, so
# nothing is lost, and hashing then takes the same few milliseconds whatever size was sent.
WORKING_SIDE = 256
# The middle hashed apart: 10% off each edge, where re-shares differ most (a crop takes an edge,
# a turn fills the corners, a caption sits at the top and bottom, an app adds a border).
MIDDLE_INSET = 0.10

# A template is recognised when its distance (mean fraction of differing hash bits, 0 to about
# 0.5) is below MATCH_DISTANCE. On the benchmark the right template lies at 0.21 at most
# (a near-blank template cropped 5%; 0.18 at the 99th percentile) and an unrelated picture of
# the same shape no nearer than 0.257 to any template (1,200 of them); 0.235 sits between the two.
MATCH_DISTANCE = 0.235
# ... and it is nearer than any other template by MIN_MARGIN. The right template always beat
# the next by 0.13 or more; a picture about as near to two templates (a blank page near every
# near-blank template) is recognised as neither.
MIN_MARGIN = 0.05
# ... and its shape (width / height) is within 20% of the template's. A re-shared template
# keeps its shape (a 5% crop from one side changes it 5%, turning a picture does not); without
# this, near-blank pictures of any shape come within 0.19 of the near-blank templates.
MAX_ASPECT_CHANGE = math.log(1.2)


@dataclass(frozen=True)
class Recognition:
    """The catalog template a picture shows, and how sure that is."""

    template: Template
    distance: float  # 0 = the same picture; recognised below MATCH_DISTANCE
    margin: float  # how much nearer than the next-nearest template

    @property
    def confidence(self) -> float:
        """1 for the template's own image, 0 at the threshold."""
        return max(0.0, 1.0 - self.distance / MATCH_DISTANCE)


def _whole(image: Image.Image) -> Image.Image:
    return image


def _middle(image: Image.Image) -> Image.Image:
    dx, dy = round(image.width * MIDDLE_INSET), round(image.height * MIDDLE_INSET)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


# name -> (the part of the picture, the hash): each gives a fixed number of bits.
HASHES: dict[str, tuple[Callable[[Image.Image], Image.Image], Callable[[Image.Image], imagehash.ImageHash]]] = {
    "dct": (_whole, imagehash.phash),  # 8x8 low frequencies of a 32x32 grey picture
    "rows": (_whole, imagehash.dhash),  # left-right brightness steps, 8x8
    "columns": (_whole, imagehash.dhash_vertical),  # top-bottom brightness steps, 8x8
    "middle dct": (_middle, imagehash.phash),
    "middle rows": (_middle, imagehash.dhash),
    "middle columns": (_middle, imagehash.dhash_vertical),
    # hue and saturation histogram, 3 bits a bin: a caption's white and black move it a little,
    # a picture of other colours a lot
    "colour": (_whole, lambda image: imagehash.colorhash(image, binbits=3)),
}


@dataclass(frozen=True)
class Fingerprint:
    """One picture's hashes (as bit arrays, in HASHES order) and shape."""

    bits: tuple[np.ndarray, ...]
    aspect: float  # width / height

    @classmethod
    def of(cls, image: Image.Image) -> Fingerprint:
        """The fingerprint of any PIL picture (any mode or size); the picture is not changed."""
        aspect = image.width / image.height
        working = _prepared(image)
        bits = tuple(
            np.asarray(hash_of(part(working)).hash, dtype=bool).ravel() for part, hash_of in HASHES.values()
        )
        return cls(bits=bits, aspect=aspect)

    def to_json(self) -> dict[str, Any]:
        return {"aspect": self.aspect, "bits": ["".join("1" if b else "0" for b in bits) for bits in self.bits]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        bits = tuple(np.array([c == "1" for c in text], dtype=bool) for text in data["bits"])
        if len(bits) != len(HASHES):
            raise ValueError("fingerprint of another shape")
        return cls(bits=bits, aspect=float(data["aspect"]))


def _prepared(image: Image.Image) -> Image.Image:
    """RGB (transparency over white, as chat apps show it), at most WORKING_SIDE on the long side."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        working = Image.new("RGB", rgba.size, (255, 255, 255))
        working.paste(rgba, mask=rgba.getchannel("A"))
    else:
        working = image.convert("RGB")  # always a copy, so the caller's picture is untouched
    # BOX averages every source pixel: as good as Lanczos this far down, and several times faster.
    working.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
    return working


@dataclass(frozen=True)
class TemplateRecognizer:
    """Finds the catalog template a picture shows. Immutable once built: thread-safe."""

    templates: tuple[Template, ...]
    bits: tuple[np.ndarray, ...]  # per hash: templates x bits, read-only
    log_aspects: np.ndarray  # per template: log(width / height), read-only

    @classmethod
    def from_fingerprints(cls, pairs: Iterable[tuple[Template, Fingerprint]]) -> TemplateRecognizer:
        pairs = list(pairs)
        if not pairs:
            raise ValueError("no templates to recognise")
        bits = tuple(np.stack([fp.bits[i] for _, fp in pairs]) for i in range(len(HASHES)))
        log_aspects = np.log(np.array([fp.aspect for _, fp in pairs]))
        for array in (*bits, log_aspects):
            array.flags.writeable = False
        return cls(templates=tuple(t for t, _ in pairs), bits=bits, log_aspects=log_aspects)

    @classmethod
    def build(cls, catalog: Catalog, images_dir: Path, cache_dir: Path | None = None) -> TemplateRecognizer:
        """The index of every catalog template whose image can be read (a missing or unreadable
        one is logged and left out: it cannot be rendered either). With cache_dir, fingerprints
        are read from and written to cache_dir/CACHE_FILE, keyed by each image's SHA-256."""
        cache_path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
        cached = _read_cache(cache_path) if cache_path is not None else {}
        fresh: dict[str, dict[str, Any]] = {}
        pairs = []
        for template in catalog.templates:
            if not isinstance(template.image, CatalogImage):
                continue
            path = catalog.image_path(template, images_dir)
            try:
                data = path.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                entry = cached.get(digest)
                fingerprint = Fingerprint.from_json(entry) if entry is not None else None
                if fingerprint is None:
                    with Image.open(io.BytesIO(data)) as image:
                        fingerprint = Fingerprint.of(image)
            except (OSError, UnidentifiedImageError, ValueError, KeyError, TypeError) as exc:
                logger.warning("template %s: image %s left out of recognition: %s", template.slug, path, exc)
                continue
            fresh[digest] = fingerprint.to_json()
            pairs.append((template, fingerprint))
        if cache_path is not None and fresh != cached:
            _write_cache(cache_path, fresh)
        return cls.from_fingerprints(pairs)

    def distances(self, fingerprint: Fingerprint) -> np.ndarray:
        """Per template: the mean fraction of hash bits that differ (0 = the same picture)."""
        total = np.zeros(len(self.templates))
        for index, query in zip(self.bits, fingerprint.bits, strict=True):
            total += np.count_nonzero(index != query, axis=1) / query.size
        return total / len(self.bits)

    def recognize(self, image: Image.Image) -> Recognition | None:
        """The catalog template the picture shows, or None when it shows none of them clearly."""
        if image.width < 1 or image.height < 1:
            return None
        fingerprint = Fingerprint.of(image)
        distances = self.distances(fingerprint)
        same_shape = np.abs(self.log_aspects - math.log(fingerprint.aspect)) <= MAX_ASPECT_CHANGE
        if not same_shape.any():
            return None
        order = np.argsort(distances, kind="stable")
        best = int(order[0])
        # The margin is over every template, of any shape: a picture about as near to two
        # templates is ambiguous whatever their shapes.
        margin = float(distances[order[1]] - distances[best]) if len(order) > 1 else 1.0
        distance = float(distances[best])
        if not same_shape[best] or distance >= MATCH_DISTANCE or margin < MIN_MARGIN:
            return None
        return Recognition(template=self.templates[best], distance=distance, margin=margin)


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """SHA-256 -> fingerprint JSON, or nothing when the file is missing, unreadable or stale."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != FINGERPRINT_VERSION:
        return {}
    images = data.get("images")
    return images if isinstance(images, dict) else {}


def _write_cache(path: Path, images: dict[str, dict[str, Any]]) -> None:
    """Written whole to a temporary file, then renamed: a reader never sees half a file, and two
    processes building at once both leave a complete one. A cache that cannot be written is
    only slower next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False
        ) as file:
            json.dump({"version": FINGERPRINT_VERSION, "images": images}, file)
        os.replace(file.name, path)
    except OSError as exc:
        logger.warning("template fingerprints not cached at %s: %s", path, exc)
