"""Template recognition (bot/recognize.py) on the real template images: each distortion of
bench/recognition.py is recognised as the right template, unrelated pictures as none, any
picture mode is taken, the index cache follows the images, and threads may share a recognizer.
The full figures (100 templates x 5 distortions, 300 unrelated pictures) come from
`python bench/recognition.py`."""

from __future__ import annotations

import ast
import json
import logging
import random
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from bench.recognition import (
    DISTORTIONS,
    gradient,
    noise,
    screenshot,
    shapes,
    text_on_colour,
    unrelated_images,
)
from bot.recognize import (
    CACHE_FILE,
    MATCH_DISTANCE,
    MIN_MARGIN,
    Fingerprint,
    Recognition,
    TemplateRecognizer,
)
from common.catalog import Catalog, load_catalog
from common.config import Config, load_config

# A photo, a picture with a white half, a near-blank drawing (the hardest to tell from a blank
# page), a cartoon.
SAMPLE = ("distracted-boyfriend", "drake-hotline-bling", "who-would-win", "two-buttons")


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config()


@pytest.fixture(scope="module")
def catalog(config: Config) -> Catalog:
    return load_catalog(config.catalog_path)


@pytest.fixture(scope="module")
def recognizer(
    config: Config, catalog: Catalog, tmp_path_factory: pytest.TempPathFactory
) -> TemplateRecognizer:
    return TemplateRecognizer.build(catalog, config.template_images_dir, tmp_path_factory.mktemp("cache"))


def blank(config: Config, catalog: Catalog, slug: str) -> Image.Image:
    with Image.open(catalog.image_path(catalog.get(slug), config.template_images_dir)) as image:
        image.load()
    return image


def test_the_index_holds_every_catalog_template(recognizer: TemplateRecognizer, catalog: Catalog) -> None:
    assert recognizer.templates == catalog.templates


@pytest.mark.parametrize("distortion", list(DISTORTIONS))
@pytest.mark.parametrize("slug", SAMPLE)
def test_a_distorted_template_is_recognised(
    recognizer: TemplateRecognizer, config: Config, catalog: Catalog, slug: str, distortion: str
) -> None:
    picture = DISTORTIONS[distortion](blank(config, catalog, slug), SAMPLE.index(slug))
    found = recognizer.recognize(picture)
    assert found is not None, f"{slug} ({distortion}) not recognised"
    assert found.template.slug == slug
    assert 0 <= found.distance < MATCH_DISTANCE
    assert found.margin >= MIN_MARGIN
    assert 0 < found.confidence <= 1


def test_a_template_image_itself_is_recognised_at_distance_zero(
    recognizer: TemplateRecognizer, config: Config, catalog: Catalog
) -> None:
    found = recognizer.recognize(blank(config, catalog, "distracted-boyfriend"))
    assert isinstance(found, Recognition)
    assert found.template == catalog.get("distracted-boyfriend")
    assert (found.distance, found.confidence) == (0.0, 1.0)


def test_unrelated_pictures_are_not_recognised(recognizer: TemplateRecognizer, catalog: Catalog) -> None:
    """The sample photos and data whole, crops of the photos, and synthetic pictures in the
    templates' own shapes: gradients, shapes, noise, text on colour, screenshots (the closest
    to the near-blank templates), and blank pages of every grey."""
    aspects = [t.width / t.height for t in catalog.templates]
    pictures = [(kind, image) for kind, image in unrelated_images(24, seed=11, aspects=aspects)]
    rng = random.Random(5)
    for make in (gradient, shapes, noise, text_on_colour, screenshot):
        for _ in range(4):
            template = rng.choice(catalog.templates)
            pictures.append((make.__name__, make(rng, (template.width, template.height))))
    for slug in ("who-would-win", "marked-safe-from", "be-like-bill"):
        template = catalog.get(slug)
        for shade in (0, 128, 245, 255):
            pictures.append(
                (f"blank {shade}", Image.new("RGB", (template.width, template.height), (shade,) * 3))
            )
    found = {kind: recognizer.recognize(image) for kind, image in pictures}
    assert {kind: f.template.slug for kind, f in found.items() if f is not None} == {}


def test_any_picture_mode_and_size_is_taken(
    recognizer: TemplateRecognizer, config: Config, catalog: Catalog
) -> None:
    drake = blank(config, catalog, "drake-hotline-bling").convert("RGB")
    for mode in ("L", "P", "RGBA", "CMYK", "LA", "1", "I", "YCbCr"):
        found = recognizer.recognize(drake.convert(mode))
        if mode != "1":  # a 1-bit picture keeps too little to be sure of
            assert found is not None and found.template.slug == "drake-hotline-bling", mode
    # Transparency is laid over white, as chat apps show it: a see-through margin is not black.
    framed = Image.new("RGBA", (drake.width, drake.height), (0, 0, 0, 0))
    framed.paste(drake.resize((drake.width - 20, drake.height - 20)), (10, 10))
    assert recognizer.recognize(framed) is not None
    for size in ((1, 1), (1, 600), (600, 1), (33, 33), (5000, 40)):
        assert recognizer.recognize(Image.new("RGB", size, "white")) is None
    assert recognizer.recognize(Image.new("RGB", (0, 0))) is None


def test_the_callers_picture_is_left_as_it_is(
    recognizer: TemplateRecognizer, config: Config, catalog: Catalog
) -> None:
    picture = blank(config, catalog, "two-buttons").convert("RGBA")
    before = picture.tobytes()
    recognizer.recognize(picture)
    assert (picture.mode, picture.tobytes()) == ("RGBA", before)


def test_threads_share_one_recognizer(
    recognizer: TemplateRecognizer, config: Config, catalog: Catalog
) -> None:
    pictures = [
        distort(blank(config, catalog, slug), i)
        for i, slug in enumerate(SAMPLE)
        for distort in DISTORTIONS.values()
    ]
    alone = [recognizer.recognize(p) for p in pictures]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            assert list(pool.map(recognizer.recognize, pictures)) == alone


# --- the index and its cache -----------------------------------------------------------------


def small_catalog(config: Config, catalog: Catalog, images: Path, slugs: tuple[str, ...]) -> Catalog:
    """A catalog of a few templates whose images are copies in `images` (a temporary folder)."""
    images.mkdir(exist_ok=True)
    templates = [catalog.get(slug) for slug in slugs]
    for template in templates:
        shutil.copy(catalog.image_path(template, config.template_images_dir), images / template.image.file)
    return Catalog(templates)


def fingerprinting(monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[TemplateRecognizer, int]]:
    """TemplateRecognizer.build that also says how many pictures it fingerprinted (the rest it
    read from the cache)."""
    calls = [0]
    original = Fingerprint.of.__func__

    def of(cls: type[Fingerprint], image: Image.Image) -> Fingerprint:
        calls[0] += 1
        return original(cls, image)

    monkeypatch.setattr(Fingerprint, "of", classmethod(of))

    def build(*args: object) -> tuple[TemplateRecognizer, int]:
        before = calls[0]
        index = TemplateRecognizer.build(*args)
        return index, calls[0] - before

    return build


def test_the_cache_is_read_back_and_a_changed_image_rebuilt(
    config: Config, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, cache = tmp_path / "images", tmp_path / "cache"
    small = small_catalog(config, catalog, images, ("distracted-boyfriend", "two-buttons", "who-would-win"))
    build = fingerprinting(monkeypatch)
    assert build(small, images, cache)[1] == 3
    assert (cache / CACHE_FILE).is_file()
    again, made = build(small, images, cache)
    assert made == 0  # every fingerprint read back
    boyfriend = blank(config, catalog, "distracted-boyfriend")
    assert again.recognize(boyfriend).template.slug == "distracted-boyfriend"

    # Two Buttons' file now holds Drake: its fingerprint is made again, the others are not.
    drake = catalog.get("drake-hotline-bling")
    shutil.copy(
        catalog.image_path(drake, config.template_images_dir), images / catalog.get("two-buttons").image.file
    )
    rebuilt, made = build(small, images, cache)
    assert made == 1
    found = rebuilt.recognize(blank(config, catalog, "drake-hotline-bling"))
    assert found is not None and found.template.slug == "two-buttons"
    assert build(small, images, cache)[1] == 0  # the cache now holds the new fingerprint


def test_a_damaged_or_stale_cache_is_rebuilt(
    config: Config, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, cache = tmp_path / "images", tmp_path / "cache"
    small = small_catalog(config, catalog, images, ("distracted-boyfriend", "two-buttons"))
    build = fingerprinting(monkeypatch)
    build(small, images, cache)
    path = cache / CACHE_FILE
    stored = json.loads(path.read_text())

    stale = dict(stored, version="made another way")
    for damaged in ("{not json", json.dumps(stale), json.dumps([1, 2]), ""):
        path.write_text(damaged)
        rebuilt, made = build(small, images, cache)
        assert made == 2
        assert rebuilt.recognize(blank(config, catalog, "two-buttons")).template.slug == "two-buttons"

    # One entry damaged: that fingerprint alone is made again.
    digest = next(iter(stored["images"]))
    path.write_text(json.dumps(dict(stored, images=dict(stored["images"], **{digest: {"bits": 3}}))))
    assert build(small, images, cache)[1] == 1
    assert build(small, images, cache)[1] == 0


def test_no_cache_where_none_can_be_written(config: Config, catalog: Catalog, tmp_path: Path) -> None:
    images = tmp_path / "images"
    small = small_catalog(config, catalog, images, ("two-buttons",))
    (tmp_path / "file").write_text("a file, not a folder")
    index = TemplateRecognizer.build(small, images, tmp_path / "file" / "cache")
    assert index.recognize(blank(config, catalog, "two-buttons")) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "images"]


def test_a_missing_or_unreadable_image_is_left_out(
    config: Config, catalog: Catalog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = tmp_path / "images"
    small = small_catalog(config, catalog, images, ("distracted-boyfriend", "two-buttons", "who-would-win"))
    (images / catalog.get("two-buttons").image.file).unlink()
    (images / catalog.get("who-would-win").image.file).write_bytes(b"not a picture")
    with caplog.at_level(logging.WARNING, logger="bot.recognize"):
        index = TemplateRecognizer.build(small, images)
    assert [t.slug for t in index.templates] == ["distracted-boyfriend"]
    assert "two-buttons" in caplog.text and "who-would-win" in caplog.text
    with pytest.raises(ValueError, match="no templates"):
        TemplateRecognizer.build(Catalog(()), images)


def test_it_imports_only_common_and_libraries() -> None:
    tree = ast.parse(Path(__file__).resolve().parent.parent.joinpath("bot", "recognize.py").read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    project = {m for m in modules if m.split(".")[0] in {"model", "training", "bot", "cli", "fakes", "bench"}}
    assert project == set()
