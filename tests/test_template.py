"""A template is a value: a user's picture becomes one by a constructor, and the service renders,
stores and rerolls memes on it exactly as on a catalog template (real renderer, SQLite, pool;
only the caption model is scripted)."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.errors import BadPictureError, PictureGoneError
from bot.memes import ChatContext, MemeOptions, Picture
from bot.render import Renderer
from bot.service import MemeService
from common.template import (
    MAX_UPLOAD_BYTES,
    UPLOAD_PREFIX,
    Box,
    ImageBytes,
    ImageError,
    Layout,
    Template,
    classic_layout,
)
from fakes.caption_model import FIXED_ENDING, ScriptedCaptions, config_for_tests, scripted_service

pytestmark = pytest.mark.timeout(60)

ALICE = ChatContext("test", chat_id="chat-1", user_id="alice")
ADMIN = ChatContext("test", chat_id="chat-1", user_id="carol", is_admin=True)
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
    assert len(template.boxes) == 2 and template.band == 0 and template.dataset_name == ""
    top, bottom = template.boxes
    assert top.y < 0.05 and bottom.y + bottom.h > 0.95  # a line across the top, one across the bottom
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
        (picture((8000, 6000), "PNG", compress_level=1), "megapixels"),
        (b"\x89PNG" + b"\0" * (MAX_UPLOAD_BYTES + 1), "MB"),
    ],
)
def test_what_is_not_a_usable_picture_is_refused_in_words(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        Template.from_image_bytes(data)


def test_a_picture_can_carry_its_own_boxes() -> None:
    one_box = Layout((Box(x=0.1, y=0.7, w=0.8, h=0.25),))
    template = Template.from_image_bytes(picture(), name="My cat", layout=one_box)
    assert template.boxes == one_box.boxes and template.name == "My cat"


@pytest.mark.parametrize(
    ("size", "band"),
    [((400, 400), False), ((800, 400), False), ((400, 800), False), ((1200, 300), True), ((300, 1000), True)],
)
def test_the_layout_follows_the_pictures_shape(size: tuple[int, int], band: bool) -> None:
    layout = classic_layout(*size)
    if not band:  # top and bottom lines, as tall as the width makes text, within bounds
        assert layout.band == 0 and len(layout.boxes) == 2
        heights_px = [box.h * size[1] for box in layout.boxes]
        assert all(0.1 * size[0] <= h <= 0.35 * size[0] for h in heights_px)
    else:  # a panorama or a long screenshot: the caption in a white band above the picture
        assert layout.band > 0 and len(layout.boxes) == 1
        (box,) = layout.boxes
        assert box.y + box.h <= layout.band and box.color == "#000000" and not box.outline


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


def test_a_panorama_gets_its_caption_in_a_white_band_above(renderer: Renderer) -> None:
    template = Template.from_image_bytes(picture((1200, 300), "PNG", (20, 20, 20)))
    assert template.height > 300 and template.band > 0
    image = decode(renderer.render(template, ["when the panorama is wide"]).data)
    band_rows = round(image.height * template.band)
    band = image.crop((0, 0, image.width, band_rows))
    below = image.crop((0, band_rows + 2, image.width, image.height))
    assert band.getextrema()[0][0] < 80  # dark text on the band...
    assert max(band.getpixel((x, 1)) for x in range(0, image.width, 5)) == (
        255,
        255,
        255,
    )  # ...which is white
    assert below.getextrema()[0][1] < 40  # and the picture below it is untouched


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_an_animated_picture_is_its_first_frame(renderer: Renderer, fmt: str) -> None:
    frames = [Image.new("RGB", (120, 90), colour) for colour in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(buffer.getvalue())), "n_frames", 1) == 3  # really animated
    template = Template.from_image_bytes(buffer.getvalue())
    image = decode(renderer.render(template, ["", ""]).data)
    r, g, b = image.getpixel((60, 45))
    assert r > 200 and g < 60 and b < 60


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


def stored_pictures(service: MemeService) -> int:
    with sqlite3.connect(service.config.database_path) as db:  # another reader, as `memebot db` is
        (count,) = db.execute("SELECT COUNT(*) FROM pictures").fetchone()
    return count


async def test_a_meme_on_a_users_picture_is_rendered_stored_and_rerolled(service: MemeService) -> None:
    data = picture((500, 400), "JPEG")
    template = Template.from_image_bytes(data, name="Alice's cat")

    made = await service.make_meme(ALICE, template, "when the", MemeOptions(method="greedy"))
    assert made.template == template
    assert made.boxes[0].startswith("when the") and FIXED_ENDING in " ".join(made.boxes)
    assert decode(made.image.data).size == (made.image.width, made.image.height) == (500, 400)
    stored = await service.storage.get_meme(made.id)
    assert stored.template == template.slug and stored.boxes == made.boxes

    again = await service.reroll(ALICE, made.id)
    assert again.id != made.id and again.template == template and again.boxes[0].startswith("when the")
    handwritten = await service.caption(ALICE, template, ["top text", "bottom text"])
    assert handwritten.template == template and handwritten.boxes == ["top text", "bottom text"]


async def test_a_sent_picture_is_kept_as_its_hash_only_unless_the_chat_keeps_pictures(
    service: MemeService, tmp_path: Path
) -> None:
    made = await service.make_meme(ALICE, Picture(picture((300, 200))), "", MemeOptions(method="greedy"))
    assert made.template.slug.startswith(UPLOAD_PREFIX) and made.found is None
    assert stored_pictures(service) == 0  # the hash in the meme's row, nothing else
    assert (await service.reroll(ALICE, made.id)).template == made.template  # from memory

    async with scripted_service(service.config, ScriptedCaptions()) as restarted:
        with pytest.raises(PictureGoneError, match="send it again"):
            await restarted.reroll(ALICE, made.id)

    await service.set_settings(ADMIN, {"keep_pictures": "on"})
    kept = await service.caption(ALICE, Picture(picture((300, 201))), ["one"])
    await service.caption(ALICE, Picture(picture((300, 201))), ["two"])
    assert stored_pictures(service) == 1  # the same picture twice is stored once
    async with scripted_service(service.config, ScriptedCaptions()) as restarted:
        again = await restarted.reroll(ALICE, kept.id)
        assert again.template == kept.template and again.template.image.data == picture((300, 201))


async def test_catalog_memes_still_point_at_their_slug(service: MemeService) -> None:
    made = await service.caption(ALICE, "drake", ["no", "yes"])
    stored = await service.storage.get_meme(made.id)
    assert stored.template == "drake-hotline-bling"
    assert await service.storage.picture_template(stored.template) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a not really", "isn't a picture"),
        (picture((640, 480), "JPEG")[:-400], "isn't a picture"),  # cut off in transit
        (picture((10, 10)), "too small"),
    ],
)
async def test_a_bad_picture_is_refused_in_words_and_nothing_is_stored(
    service: MemeService, data: bytes, message: str
) -> None:
    with pytest.raises(BadPictureError, match=message):
        await service.make_meme(ALICE, Picture(data), "when")
    with pytest.raises(BadPictureError, match=message):
        await service.caption(ALICE, Picture(data), ["top"])
    assert await service.history(ALICE) == []


SEED_PICTURES = [picture((64, 48), fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP")]


@given(
    data=st.one_of(
        st.binary(max_size=2048),
        st.builds(
            lambda seed, cut, flips: _mutated(SEED_PICTURES[seed % len(SEED_PICTURES)], cut, flips),
            st.integers(0, 4),
            st.floats(0.0, 1.0),
            st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
        ),
    )
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_any_bytes_make_a_meme_or_a_clear_refusal(service: MemeService, data: bytes) -> None:
    """Random and mutated bytes: a meme, or BadPictureError; never a crash, never a half-stored meme."""
    before = len(await service.history(ALICE, n=50))
    try:
        made = await service.caption(ALICE, Picture(data), ["top", "bottom"])
    except BadPictureError as exc:
        assert exc.user_message and len(await service.history(ALICE, n=50)) == before
    else:
        assert decode(made.image.data).size == (made.image.width, made.image.height)


def _mutated(data: bytes, cut: float, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data[: max(1, round(len(data) * cut))] if cut < 0.95 else data)
    for position, value in flips:
        out[position % len(out)] = value
    return bytes(out)


async def test_a_picture_of_a_known_template_is_that_template(service: MemeService) -> None:
    """An old Drake meme, re-encoded small: the catalog's Drake, its layout and the model's Drake."""
    drake = service.catalog.get("drake-hotline-bling")
    with Image.open(service.config.template_images_dir / drake.image.file) as image:
        buffer = io.BytesIO()
        image.convert("RGB").resize((image.width // 2, image.height // 2)).save(buffer, "JPEG", quality=40)
    made = await service.make_meme(
        ALICE, Picture(buffer.getvalue()), "when the", MemeOptions(method="greedy")
    )
    assert made.template == drake and made.found is not None and made.found.how == "recognized"
    assert (await service.storage.get_meme(made.id)).template == "drake-hotline-bling"

    await service.set_settings(ADMIN, {"templates": "two buttons"})  # Drake not allowed here:
    plain = await service.caption(ALICE, Picture(buffer.getvalue()), ["a", "b"])  # the picture as it is
    assert plain.template.is_upload and plain.found is None


async def test_a_picture_or_template_without_captions_is_asked_for_every_box(tmp_path: Path) -> None:
    """Without a template's captions to go by the model often stops early (the best of 8 left a
    line empty in 37 of 60 picture memes): for a picture, or a template the model has no
    captions of, it must write every box (the rule itself: tests/test_constrained.py)."""
    config = config_for_tests(tmp_path, user_burst=100, chat_burst=100)
    model = ScriptedCaptions()
    async with scripted_service(config, model) as service:
        await service.make_meme(ALICE, Picture(picture((400, 300))), "", MemeOptions(method="sample"))
        assert model.last.fill_boxes and model.last.n_boxes == 2
        await service.make_meme(ALICE, "drake", "", MemeOptions(method="sample"))
        assert not model.last.fill_boxes  # people leave boxes empty on templates with captions
        await service.make_meme(ALICE, "batman-slapping-robin", "", MemeOptions(method="sample"))
        assert model.last.fill_boxes
        await service.meme_candidates(ALICE, "but-thats-none-of-my-business", "", n=2)
        assert model.last.fill_boxes and model.last.n_boxes == 1  # the closing is no model's
