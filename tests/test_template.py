"""A template is a value: a user's picture becomes one by a constructor, and the service renders,
stores and rerolls memes on it exactly as on a catalog template (real renderer, SQLite, pool;
only the caption model is scripted)."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from bot.render import Renderer
from bot.service import ChatContext, MemeOptions, MemeService
from bot.storage import Storage
from common.template import (
    MAX_UPLOAD_BYTES,
    TOP_AND_BOTTOM,
    UPLOAD_PREFIX,
    Box,
    ImageBytes,
    ImageError,
    Template,
)
from fakes.caption_model import FIXED_ENDING, ScriptedCaptions, config_for_tests, scripted_service

pytestmark = pytest.mark.timeout(60)

ALICE = ChatContext("test", chat_id="chat-1", user_id="alice")
ORIENTATION = 0x0112


def picture(
    size: tuple[int, int] = (400, 300), fmt: str = "PNG", colour: object = (40, 90, 160), **save
) -> bytes:
    mode = "RGBA" if isinstance(colour, tuple) and len(colour) == 4 else "RGB"
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, fmt, **save)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


# --- the constructor --------------------------------------------------------------------------------


def test_a_picture_becomes_a_template_keyed_by_its_content() -> None:
    data = picture((400, 300))
    template = Template.from_image_bytes(data)
    assert template.is_upload and template.slug.startswith(UPLOAD_PREFIX)
    assert (template.width, template.height) == (400, 300)
    assert template.boxes == TOP_AND_BOTTOM and template.dataset_name == ""
    assert isinstance(template.image, ImageBytes) and template.image.data == data
    # The same picture sent twice is the same template; another picture is another.
    assert Template.from_image_bytes(bytes(data)) == template
    assert Template.from_image_bytes(picture((400, 301))).slug != template.slug


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_every_common_picture_format_is_taken(fmt: str) -> None:
    assert Template.from_image_bytes(picture((120, 90), fmt)).width == 120


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "isn't a picture"),
        (b"%PDF-1.4 not an image", "isn't a picture"),
        (picture((400, 300))[:200], "isn't a picture"),  # cut off in transit
        (picture((20, 300)), "too small"),
        (b"\x89PNG" + b"\0" * (MAX_UPLOAD_BYTES + 1), "MB"),
    ],
)
def test_what_is_not_a_usable_picture_is_refused_in_words(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        Template.from_image_bytes(data)


def test_a_picture_can_carry_its_own_boxes() -> None:
    one_box = (Box(x=0.1, y=0.7, w=0.8, h=0.25),)
    template = Template.from_image_bytes(picture(), name="My cat", boxes=one_box)
    assert template.boxes == one_box and template.name == "My cat"


# --- rendering a picture ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    return Renderer(tmp_path_factory.mktemp("no-catalog-images"), max_side=400)


def test_a_transparent_picture_is_drawn_on_white_not_black(renderer: Renderer) -> None:
    template = Template.from_image_bytes(picture((200, 200), "PNG", (0, 0, 0, 0)))
    image = decode(renderer.render(template, ["", ""]).data)
    assert image.getpixel((100, 100)) == (255, 255, 255)


def test_a_phone_photo_taken_upright_is_drawn_upright(renderer: Renderer) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored landscape, shown turned 90 degrees: portrait
    template = Template.from_image_bytes(picture((400, 200), "JPEG", exif=exif.tobytes()))
    meme = renderer.render(template, ["top", "bottom"])
    assert (meme.width, meme.height) == (200, 400)


def test_text_is_drawn_on_the_picture(renderer: Renderer) -> None:
    template = Template.from_image_bytes(picture((300, 300)))
    blank = decode(renderer.render(template, ["", ""]).data)
    captioned = decode(renderer.render(template, ["top text", "bottom text"]).data)
    differs = [
        y
        for y in range(300)
        if any(blank.getpixel((x, y)) != captioned.getpixel((x, y)) for x in range(0, 300, 3))
    ]
    assert differs and min(differs) < 300 * 0.25 and max(differs) > 300 * 0.75  # in the top and bottom boxes


# --- through the service, into storage, and 🔁 ------------------------------------------------------------


@pytest.fixture
async def service(tmp_path: Path):
    config = config_for_tests(tmp_path, user_burst=100, chat_burst=100)
    async with scripted_service(config, ScriptedCaptions()) as service:
        yield service


async def test_a_meme_on_a_users_picture_is_rendered_stored_and_rerolled(service: MemeService) -> None:
    data = picture((500, 400), "JPEG")
    template = Template.from_image_bytes(data, name="Alice's cat")

    made = await service.make_meme(ALICE, template, "when the", MemeOptions(method="greedy"))
    assert made.template == template
    assert made.boxes[0].startswith("when the") and FIXED_ENDING in " ".join(made.boxes)
    assert decode(made.image.data).size == (made.image.width, made.image.height) == (500, 400)

    stored = await service.storage.get_meme(made.id)
    assert stored.template == template.slug and stored.boxes == made.boxes
    kept = await service.storage.picture_template(template.slug)
    assert kept == template and kept.image.data == data and kept.name == "Alice's cat"

    again = await service.reroll(ALICE, made.id)
    assert again.id != made.id and again.template == template and again.boxes[0].startswith("when the")

    handwritten = await service.caption(ALICE, template, ["top text", "bottom text"])
    assert handwritten.template == template and handwritten.boxes == ["top text", "bottom text"]


async def test_the_picture_is_stored_once_and_survives_a_restart(
    service: MemeService, tmp_path: Path
) -> None:
    template = Template.from_image_bytes(picture((300, 200)))
    first = await service.caption(ALICE, template, ["one"])
    await service.caption(ALICE, template, ["two"])
    with sqlite3.connect(service.config.database_path) as db:  # another reader, as `memebot db` is
        (count,) = db.execute("SELECT COUNT(*) FROM pictures").fetchone()
    assert count == 1
    path = service.config.database_path
    async with await Storage.open(path, service.config.storage.user_hash_key) as reopened:
        meme = await reopened.get_meme(first.id)
        assert (await reopened.picture_template(meme.template)) == template


async def test_catalog_memes_still_point_at_their_slug(service: MemeService) -> None:
    made = await service.caption(ALICE, "drake", ["no", "yes"])
    stored = await service.storage.get_meme(made.id)
    assert stored.template == "drake-hotline-bling"
    assert await service.storage.picture_template(stored.template) is None
