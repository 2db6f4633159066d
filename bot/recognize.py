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
import PIL
from PIL import Image, UnidentifiedImageError

from common.catalog import Catalog
from common.template import Template

logger = logging.getLogger(__name__)

# Bumped when the way a fingerprint is made changes beyond the settings that _cache_key() reads
# (hash names, sizes, library versions): a cache written another way is then ignored and rebuilt.
FINGERPRINT_VERSION = 1
CACHE_FILE = "template-fingerprints.json"

# Pictures are reduced to this long side before hashing. Every hash looks at 32 px or fewer, so
# nothing is lost, and hashing then takes the same few milliseconds whatever size was sent.
WORKING_SIDE = 256
# The middle, hashed apart: 5% off each edge, where re-shares differ most (a crop takes an edge,
# a turn fills the corners, a caption starts at the top and bottom, an app adds a border). 10%
# left less of a near-blank template to tell it by: its 5% crop came out 0.05 further away.
MIDDLE_INSET = 0.05

# A template is recognised when its distance (mean fraction of differing hash bits: 0 for the
# same picture, about 0.5 for unrelated ones) is below MATCH_DISTANCE. On the benchmark's 500
# distorted templates the right one lies at 0.226 at most (a near-blank template, Who Would Win,
# cropped 5%; 0.197 at the 99th percentile), and of 1,200 unrelated pictures (seeds 0-3) none
# comes nearer than 0.250 to a template of its shape; 0.235 sits between the two. Checked on
# 4,800 more (seeds 4-19, not used to choose): one screenshot of text was taken for Who Would Win
# at 0.232. 0.225 would have refused it, and Who Would Win cropped 5% with it.
MATCH_DISTANCE = 0.235
# ... and it is nearer than any other template by MIN_MARGIN. The right template beat the next
# by 0.11 or more; a picture about as near to two templates (a blank page is near every
# near-blank template) is recognised as neither.
MIN_MARGIN = 0.05
# ... and its shape (width / height) is within 20% of the template's. A re-shared template
# keeps its shape (a 5% crop from one side changes it 5%, turning it in place not at all), so
# this costs no recognitions; without it, unrelated pictures of other shapes came to 0.239.
MAX_ASPECT_CHANGE = math.log(1.2)


@dataclass(frozen=True)
class Recognition:
    """The catalog template a picture shows, and how sure that is."""

    template: Template
    distance: float  # mean fraction of hash bits that differ: 0 = the same picture, < MATCH_DISTANCE
    margin: float  # how much nearer than the next-nearest template (>= MIN_MARGIN)

    @property
    def confidence(self) -> float:
        """1 for the template's own image, 0 at the threshold."""
        return max(0.0, 1.0 - self.distance / MATCH_DISTANCE)


def _whole(image: Image.Image) -> Image.Image:
    return image


def _middle(image: Image.Image) -> Image.Image:
    dx, dy = round(image.width * MIDDLE_INSET), round(image.height * MIDDLE_INSET)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


@dataclass(frozen=True)
class Hash:
    """One hash of a fingerprint: which part of the picture, hashed how (a fixed number of bits)."""

    name: str
    part: Callable[[Image.Image], Image.Image]
    hash: Callable[[Image.Image], imagehash.ImageHash]


HASHES = (
    Hash("dct", _whole, imagehash.phash),  # 8x8 low frequencies of a 32x32 grey picture
    Hash("rows", _whole, imagehash.dhash),  # left-right brightness steps, 8x8
    Hash("columns", _whole, imagehash.dhash_vertical),  # top-bottom brightness steps, 8x8
    Hash("middle dct", _middle, imagehash.phash),
    Hash("middle rows", _middle, imagehash.dhash),
    Hash("middle columns", _middle, imagehash.dhash_vertical),
    # Hue and saturation histogram, 3 bits a bin (42 bits): a caption's white and black move it
    # a little, a picture of other colours a lot.
    Hash("colour", _whole, lambda image: imagehash.colorhash(image, binbits=3)),
)


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """One picture's hashes (as bit arrays, in HASHES order) and shape."""

    bits: tuple[np.ndarray, ...]
    aspect: float  # width / height

    @classmethod
    def of(cls, image: Image.Image) -> Fingerprint:
        """The fingerprint of any PIL picture (any mode or size); the picture is not changed."""
        aspect = image.width / image.height
        working = _prepared(image)
        bits = tuple(np.asarray(h.hash(h.part(working)).hash, dtype=bool).ravel() for h in HASHES)
        return cls(bits=bits, aspect=aspect)

    def to_json(self) -> dict[str, Any]:
        return {
            "aspect": self.aspect,
            "bits": ["".join("1" if b else "0" for b in bits) for bits in self.bits],
        }

    @classmethod
    def from_json(cls, data: Any) -> Fingerprint | None:
        """The fingerprint to_json wrote, or None for anything else (a damaged cache entry)."""
        try:
            bits = tuple(np.array([c == "1" for c in text], dtype=bool) for text in data["bits"])
            aspect = float(data["aspect"])
        except (TypeError, KeyError, ValueError):
            return None
        if len(bits) != len(HASHES) or not math.isfinite(aspect) or aspect <= 0:
            return None
        return cls(bits=bits, aspect=aspect)


def _prepared(image: Image.Image) -> Image.Image:
    """A new RGB picture (transparency over white, as chat apps show it), at most WORKING_SIDE on
    the long side; the caller's picture is left as it is."""
    if image.mode not in ("RGB", "L"):
        # Palettes cannot be averaged, and alpha must be laid over white before it is: convert
        # at full size (rare: photos come as RGB, screenshots as RGB or RGBA).
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        converted = image.convert("RGBA" if has_alpha else "RGB")
        if has_alpha:
            flat = Image.new("RGB", converted.size, (255, 255, 255))
            flat.paste(converted, mask=converted.getchannel("A"))
            converted = flat
        image = converted
    scale = min(1.0, WORKING_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # BOX averages every source pixel: as good as Lanczos this far down, and several times
    # faster. resize() makes a new picture without copying the full-size one first.
    working = image.resize(size, Image.Resampling.BOX) if scale < 1.0 else image.copy()
    return working.convert("RGB")


@dataclass(frozen=True, eq=False)  # compared by identity: arrays have no single truth value
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
            path = catalog.image_path(template, images_dir)
            try:
                data = path.read_bytes()
            except OSError as exc:
                logger.warning("template %s left out of recognition: %s", template.slug, exc)
                continue
            digest = hashlib.sha256(data).hexdigest()
            fingerprint = Fingerprint.from_json(cached[digest]) if digest in cached else None
            if fingerprint is None:
                try:
                    with Image.open(io.BytesIO(data)) as image:
                        fingerprint = Fingerprint.of(image)
                except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
                    logger.warning("template %s left out of recognition: %s: %s", template.slug, path, exc)
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


def _cache_key() -> str:
    """Everything a fingerprint depends on besides the image: a cache made with other hashes,
    sizes or library versions (Pillow's resampling, imagehash's hashes) is not used."""
    hashes = ",".join(h.name for h in HASHES)
    return (
        f"{FINGERPRINT_VERSION}; {hashes}; side {WORKING_SIDE}; inset {MIDDLE_INSET}; "
        f"imagehash {imagehash.__version__}; pillow {PIL.__version__}; numpy {np.__version__}"
    )


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """SHA-256 -> fingerprint JSON, or nothing when the file is missing, unreadable or stale."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _cache_key():
        return {}
    images = data.get("images")
    return images if isinstance(images, dict) else {}


def _write_cache(path: Path, images: dict[str, dict[str, Any]]) -> None:
    """Written whole to a temporary file, then renamed: a reader never sees half a file, and two
    processes building at once both leave a complete one. A cache that cannot be written is
    only slower next time."""
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False
        ) as file:
            temporary = Path(file.name)
            json.dump({"version": _cache_key(), "images": images}, file)
        temporary.chmod(0o644)  # a temporary file starts private; the cache is not secret
        os.replace(temporary, path)
    except OSError as exc:
        logger.warning("template fingerprints not cached at %s: %s", path, exc)
        if temporary is not None:
            temporary.unlink(missing_ok=True)
