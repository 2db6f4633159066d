"""The renderer: text stays in its box, fits, falls back or drops characters, caches, encodes.

Reference renders live in tests/renders/; after an intended change in how memes look,
regenerate them with `.venv/bin/python tests/test_render.py --update-renders` and look at them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import io
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops

from bot.fonts import RAQM, FontFile, FontSet, anton_font
from bot.graphemes import clusters, upper_cased
from bot.render import (
    RenderedMeme,
    Renderer,
    RenderError,
    TemplateImageMissing,
    TooManyBoxes,
    assign_texts,
    box_count_error,
    missing_note,
)
from bot.textfit import ELLIPSIS, clean_caption
from cli.doctor import check as doctor_check
from cli.main import main
from cli.render import model_captions, typical_caption
from common.catalog import Box, Catalog, Template, load_catalog
from common.config import Config
from common.template import CatalogImage

RENDERS = Path(__file__).parent / "renders"
SHARED_IMAGES = Config().template_images_dir
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
GREY = (128, 128, 128)
MARGIN = 2  # px of antialiasing allowed outside a box
LONG_CAPTION = (
    "when you finally fix the bug at three in the morning and the test suite goes green, "
    "then you notice it was testing the wrong branch all along and nothing works at all"
)
assert len(LONG_CAPTION) >= 160


def template(
    image: str, boxes: list[Box], size: tuple[int, int] = (320, 300), slug: str = "plain"
) -> Template:
    return Template(
        slug=slug,
        name=slug.replace("-", " ").title(),
        imgflip_id=1,
        dataset_name=slug.title(),
        image=CatalogImage(image),
        width=size[0],
        height=size[1],
        aliases=(),
        has_data=False,
        boxes=tuple(boxes),
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plain grey templates: any pixel that changes is text."""
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (320, 300), GREY).save(folder / "plain.png")
    Image.new("RGB", (1600, 1200), GREY).save(folder / "big.png")
    Image.new("RGB", (200, 150), GREY).save(folder / "small.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def renderer(images: Path) -> Renderer:
    return Renderer(images)


def decode(meme: RenderedMeme) -> Image.Image:
    return Image.open(io.BytesIO(meme.data)).convert("RGB")


def ink_bbox(
    meme: RenderedMeme, box: tuple[int, int, int, int] | None = None
) -> tuple[int, int, int, int] | None:
    """Bounding box of pixels that differ from the grey template (optionally within `box`)."""
    image = decode(meme)
    diff = ImageChops.difference(image, Image.new("RGB", image.size, GREY)).convert("L")
    if box is not None:
        diff = diff.crop(box)
    return diff.point(lambda v: 255 if v > 24 else 0).getbbox()


def box_px(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    return round(box.x * w), round(box.y * h), round((box.x + box.w) * w), round((box.y + box.h) * h)


def assert_inside(bbox: tuple[int, int, int, int] | None, rect: tuple[int, int, int, int]) -> None:
    assert bbox is not None, "no text was drawn"
    left, top, right, bottom = rect
    assert bbox[0] >= left - MARGIN and bbox[1] >= top - MARGIN, f"ink {bbox} spills out of box {rect}"
    assert bbox[2] <= right + MARGIN and bbox[3] <= bottom + MARGIN, f"ink {bbox} spills out of box {rect}"


# --- layout ------------------------------------------------------------------------------------

BOXES = {
    "top": Box(0.0, 0.0, 1.0, 0.25),
    "bottom": Box(0.0, 0.75, 1.0, 0.25),
    "middle-left": Box(0.1, 0.4, 0.5, 0.3, align="left"),
    "right-panel": Box(0.55, 0.1, 0.4, 0.5, align="right", color="#000000", outline=""),
}
TEXTS = {
    "short": "one does not simply",
    "long": LONG_CAPTION,
    "long-word": "pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "typed-lines": "first line\nsecond line\n\nafter a blank",
}


@pytest.mark.parametrize("text_name", TEXTS)
@pytest.mark.parametrize("box_name", BOXES)
def test_text_lands_inside_its_box(renderer: Renderer, box_name: str, text_name: str) -> None:
    box = BOXES[box_name]
    meme = renderer.render(template("plain.png", [box]), [TEXTS[text_name]])
    assert_inside(ink_bbox(meme), box_px(box, (meme.width, meme.height)))


def test_a_long_caption_still_fits_a_small_box(renderer: Renderer) -> None:
    box = Box(0.35, 0.4, 0.3, 0.15)
    meme = renderer.render(template("plain.png", [box]), [LONG_CAPTION + " " + LONG_CAPTION[:40]])
    assert_inside(ink_bbox(meme), box_px(box, (320, 300)))
    fitted = renderer.fit(renderer.prepare(LONG_CAPTION, True), box, (320, 300))
    assert fitted.lines and fitted.truncated
    assert fitted.lines[-1].endswith(ELLIPSIS), "a cut caption must say so with an ellipsis"


def test_short_captions_get_bigger_type_than_long_ones(renderer: Renderer) -> None:
    box = BOXES["top"]
    short = renderer.fit(renderer.prepare("yes", True), box, (320, 300))
    long = renderer.fit(renderer.prepare(LONG_CAPTION, True), box, (320, 300))
    assert short.size > long.size
    assert not short.truncated and short.lines == ("YES",)


def test_very_long_words_are_broken_rather_than_spilling(renderer: Renderer) -> None:
    box = BOXES["middle-left"]
    word = "A" * 60
    fitted = renderer.fit(word, box, (320, 300))
    assert len(fitted.lines) > 1 and "".join(fitted.lines).rstrip(ELLIPSIS) in word
    assert all(renderer.fonts.width(line, fitted.size) <= box.w * 320 for line in fitted.lines)


def test_typed_line_breaks_and_case_are_kept_as_asked(renderer: Renderer) -> None:
    box = Box(0.0, 0.0, 1.0, 0.6)
    assert renderer.fit(renderer.prepare("Top line\nbottom", True), box, (320, 300)).lines == (
        "TOP LINE",
        "BOTTOM",
    )
    assert renderer.fit(renderer.prepare("Top line\nbottom", False), box, (320, 300)).lines == (
        "Top line",
        "bottom",
    )


def test_as_typed_and_layout_case_style_change_the_image(renderer: Renderer) -> None:
    upper_box, lower_box = Box(0.0, 0.0, 1.0, 0.3), Box(0.0, 0.0, 1.0, 0.3, uppercase=False)
    shouting = renderer.render(template("plain.png", [upper_box]), ["quiet please"])
    as_typed = renderer.render(template("plain.png", [upper_box]), ["quiet please"], uppercase=False)
    layout_lower = renderer.render(template("plain.png", [lower_box]), ["quiet please"])
    assert decode(shouting).tobytes() != decode(as_typed).tobytes()
    assert decode(as_typed).tobytes() == decode(layout_lower).tobytes()


def test_multi_box_templates_fill_the_right_boxes(renderer: Renderer) -> None:
    boxes = [Box(0.0, 0.0, 1.0, 0.3), Box(0.0, 0.35, 1.0, 0.3), Box(0.0, 0.7, 1.0, 0.3)]
    meme = renderer.render(template("plain.png", boxes), ["first", "", "third"])
    first, second, third = (box_px(b, (320, 300)) for b in boxes)
    assert ink_bbox(meme, first) is not None
    assert ink_bbox(meme, second) is None, "an empty text must leave its box empty"
    assert ink_bbox(meme, third) is not None
    assert_inside(ink_bbox(meme), (0, 0, 320, 300))


def test_more_texts_than_boxes_are_refused_with_the_count_never_merged(renderer: Renderer) -> None:
    assert assign_texts(["a"], 3) == ["a", "", ""]
    assert assign_texts("one string", 2) == ["one string", ""]
    assert assign_texts(["a", "b", "", " "], 2) == ["a", "b"]  # empty boxes at the end do not count
    with pytest.raises(TooManyBoxes):
        assign_texts(["a", "b", "c"], 2)
    boxes = [Box(0.0, 0.0, 1.0, 0.3), Box(0.0, 0.5, 1.0, 0.5)]
    with pytest.raises(TooManyBoxes, match=r"Plain has 2 text boxes, and you gave 3") as caught:
        renderer.render(template("plain.png", boxes), ["top", "bottom", "more"])
    assert "more boxes" in str(caught.value)
    one = template("plain.png", boxes[:1])
    assert box_count_error(one, 1) is None
    assert box_count_error(one, 2, "|") == (
        "Plain has one text box, and you gave 2 (boxes are separated by |). Put that text into it, "
        "or pick a template with more boxes."
    )


def test_rotated_box_is_drawn_around_its_centre(renderer: Renderer) -> None:
    box = Box(0.25, 0.3, 0.5, 0.4, angle=20.0, color="#000000", outline="")
    meme = renderer.render(template("plain.png", [box]), ["tilted sign text"])
    bbox = ink_bbox(meme)
    assert bbox is not None
    centre = ((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    assert abs(centre[0] - 160) < 12 and abs(centre[1] - 150) < 12
    # Black text without outline: the ink is dark, never the white of the classic style.
    darkest, lightest = decode(meme).crop(bbox).convert("L").getextrema()
    assert darkest < 20 and lightest <= 130


# --- characters ----------------------------------------------------------------------------------


def test_control_and_zero_width_characters_are_removed() -> None:
    assert clean_caption("a\u200bb\x07c\u200d\ufeff d\r\ne") == "abc d\ne"
    assert clean_caption("  \t\n  ") == ""
    assert clean_caption("q\u0301\u0301\u0301\u0301\u0301") == "q\u0301\u0301"  # zalgo is capped
    assert clean_caption("e\u0301") == "\u00e9"  # composed, so Anton's own é is used


def test_the_joiners_and_tags_that_make_one_emoji_are_kept() -> None:
    family, scotland, firefighter = (
        "👨\u200d👩\u200d👧",
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
        "🧑🏽\u200d🚒",
    )
    for emoji in (family, scotland, firefighter, "👍🏽", "🇯🇵", "1️⃣", "❤️\u200d🔥"):
        assert clean_caption(f"a {emoji} b") == f"a {emoji} b"
        assert clusters(emoji) == [emoji]
    assert clean_caption("f\u200du\u200dn") == "fun"  # between letters a joiner only hides a word


def test_the_font_comes_from_the_installed_package(renderer: Renderer) -> None:
    packaged = Path(str(importlib.resources.files("fontpkg_anton").joinpath("files/Anton-Regular.ttf")))
    assert renderer.fonts.files[0] == anton_font() == FontFile(packaged)
    assert "fontpkg_anton" in packaged.parts
    assert renderer.fonts.font(0, 40).getname() == ("Anton", "Regular")


@pytest.mark.skipif(not DEJAVU.is_file(), reason="needs fonts-dejavu-core")
def test_characters_anton_lacks_use_a_fallback_font_or_a_visible_replacement() -> None:
    fonts = FontSet(anton_font(), [FontFile(DEJAVU)])
    # DejaVu has Cyrillic and the replacement mark; nobody here has CJK.
    assert fonts.drawable("ABC Жж 中文 x") == "ABC Жж \ufffd\ufffd x"
    assert fonts.undrawable("ABC Жж 中文 x 中") == ["中", "文"]
    runs = fonts.runs("HI ЖЖ", 30)
    assert [r.font.getname()[0] for r in runs] == ["Anton", "DejaVu Sans"]
    anton_only = FontSet(anton_font())
    assert anton_only.drawable("Жж!").endswith("!") and anton_only.undrawable("Жж!") == ["Ж", "ж"]


@pytest.mark.skipif(not DEJAVU.is_file(), reason="needs fonts-dejavu-core")
def test_undrawable_text_shows_a_replacement_and_is_named(images: Path) -> None:
    renderer = Renderer(images, fallback_fonts=[DEJAVU])
    toto = "\U0001e290"  # Toto (Unicode 14): in no font this project installs
    if renderer.fonts.font_for(toto) is not None:
        pytest.skip("a font with Toto letters is installed here")
    meme = renderer.render(template("plain.png", [BOXES["top"]]), [f"{toto}{toto}"])
    assert ink_bbox(meme) is not None, "something must show where the text was"
    assert meme.missing == (toto,)
    note = missing_note(meme.missing)
    assert toto in note and "U+1E290" in note and "no font" in note
    assert missing_note(()) == ""


@settings(max_examples=25, deadline=None)
@given(texts=st.lists(st.text(max_size=400), max_size=4))
@example(texts=[])
@example(texts=["", "   \n\t  "])
@example(texts=["x" * 5000])
@example(texts=["word " * 1000, "\n" * 5000])
@example(texts=["\u200b" * 100, "\ud800 lone surrogate", "z" + "\u0301" * 500])
@example(texts=["مرحبا بالعالم", "😀👍🏽 emoji", "中文字幕", "Ünïcödé ß ﬁ"])
def test_any_text_renders_without_error(renderer: Renderer, texts: list[str]) -> None:
    boxes = [
        BOXES["top"],
        BOXES["middle-left"],
        Box(0.9, 0.9, 0.1, 0.1),
        Box(0.5, 0.7, 0.4, 0.2, angle=-30.0),
    ]
    meme = renderer.render(template("plain.png", boxes), texts)
    assert decode(meme).size == (320, 300)


# --- every script, every emoji ------------------------------------------------------------------

SCRIPTS = {
    "Cyrillic": "Привет мир",
    "Greek": "Γειά σου κόσμε",
    "Japanese": "こんにちは世界",
    "Chinese": "你好，世界",
    "Korean": "안녕하세요 세계",
    "Arabic": "مرحبا بالعالم",
    "Hebrew": "שלום עולם",
    "Hindi": "नमस्ते दुनिया",
    "Thai": "สวัสดีชาวโลก",
}
EMOJI = {
    "plain": "😂",
    "skin tone": "👍🏽",
    "flag": "🇯🇵",
    "subdivision flag": "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
    "joiners": "👩\u200d💻",
    "keycap": "1️⃣",
    "heart on fire": "❤️\u200d🔥",
}


def needs_fonts(renderer: Renderer, *texts: str) -> None:
    """Skip where no installed font draws `texts` (scripts/setup.sh installs them)."""
    lost = [t for t in texts if renderer.fonts.undrawable(t)]
    if lost:
        pytest.skip(f"no font here draws {lost}: run scripts/setup.sh")


def colourful_pixels(image: Image.Image) -> int:
    """Pixels that are clearly neither grey, white nor black: colour emoji."""
    _, saturation, value = image.convert("HSV").split()
    vivid = ImageChops.multiply(
        saturation.point(lambda x: 255 if x > 100 else 0), value.point(lambda x: 255 if x > 80 else 0)
    )
    return vivid.histogram()[255]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_is_drawn_with_a_font_that_has_it(renderer: Renderer, script: str) -> None:
    text = SCRIPTS[script]
    needs_fonts(renderer, text)
    for box in (BOXES["top"], BOXES["right-panel"]):  # white with outline; black without
        meme = renderer.render(template("plain.png", [box]), [text])
        assert meme.missing == ()
        assert_inside(ink_bbox(meme), box_px(box, (320, 300)))
    assert renderer.prepare(text, True) == upper_cased(text)
    assert all(
        run.font_index != 0
        for run in renderer.fonts.runs(renderer.prepare(text, False), 40)
        if run.text.strip()
    )


@pytest.mark.parametrize("name", EMOJI)
def test_emoji_are_drawn_in_colour_as_one_glyph(renderer: Renderer, name: str) -> None:
    emoji = EMOJI[name]
    needs_fonts(renderer, emoji)
    runs = renderer.fonts.runs(emoji, 60)
    assert len(runs) == 1 and runs[0].colour, "an emoji sequence is one colour run"
    single = renderer.fonts.width("😀", 60)
    assert renderer.fonts.width(emoji, 60) == pytest.approx(single), "drawn as one glyph, not its parts"
    box = Box(0.3, 0.3, 0.4, 0.4)
    meme = renderer.render(template("plain.png", [box]), [emoji])
    assert meme.missing == ()
    assert colourful_pixels(decode(meme)) > 200
    assert_inside(ink_bbox(meme), box_px(box, (320, 300)))


def test_emoji_sit_among_words_at_any_size_and_angle(renderer: Renderer) -> None:
    needs_fonts(renderer, "🔥")
    for box in (BOXES["top"], Box(0.2, 0.3, 0.6, 0.4, angle=-20.0), Box(0.9, 0.9, 0.1, 0.1)):
        meme = renderer.render(template("plain.png", [box]), ["🔥🔥🔥 emoji everywhere 😂"])
        assert meme.missing == ()
        assert colourful_pixels(decode(meme)) > (0 if box.w < 0.2 else 200)
    sizes = [renderer.fonts.width("🔥", size) for size in (20, 40, 80)]
    assert sizes[0] < sizes[1] < sizes[2] and sizes[2] == pytest.approx(4 * sizes[0], rel=0.05)


def test_skin_tones_change_the_picture(renderer: Renderer) -> None:
    needs_fonts(renderer, "👍🏽")
    box = Box(0.3, 0.3, 0.4, 0.4)
    plain, toned = (renderer.render(template("plain.png", [box]), [t]) for t in ("👍", "👍🏽"))
    assert decode(plain).tobytes() != decode(toned).tobytes()


def test_right_to_left_text_is_ordered_right_to_left(renderer: Renderer) -> None:
    needs_fonts(renderer, SCRIPTS["Hebrew"], SCRIPTS["Arabic"], "😀")

    def pieces(line: str) -> list[str]:
        """The runs left to right, each in logical order (raqm lays out an rtl run itself;
        without raqm a run's text is already in the order it is drawn)."""
        runs = [r for r in renderer.fonts.runs(line, 40) if r.text.strip()]
        return [r.text.strip() if RAQM or r.font_index == 0 else r.text.strip()[::-1] for r in runs]

    # A left-to-right line with Hebrew inside: the Hebrew runs right to left in its place.
    assert pieces("abc אבג 😀") == ["abc", "אבג", "😀"]
    # A right-to-left line: its first words are on the right, the Latin inside stays left to right.
    assert pieces("אבג abc 😀") == ["😀", "abc", "אבג"]
    assert pieces("مرحبا 2024") == ["2024", "مرحبا"]
    runs = [r for r in renderer.fonts.runs("مرحبا 2024", 40) if r.text.strip()]
    if RAQM:  # shaped: joined Arabic letters are not their isolated forms side by side
        assert [r.direction for r in runs] == ["ltr", "rtl"]
        assert renderer.fonts.width("ببب", 40) != pytest.approx(3 * renderer.fonts.width("ب", 40))


@settings(max_examples=60, deadline=None)
@given(line=st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), max_size=60))
@example(line="abc אבג 123 مرحبا (x) 😀👍🏽🇯🇵 中文")
def test_a_line_is_drawn_whole_every_character_once(renderer: Renderer, line: str) -> None:
    drawn = renderer.fonts.drawable(line.replace("\n", " "))
    runs = renderer.fonts.runs(drawn, 30)
    assert sorted("".join(r.text for r in runs)) == sorted(drawn)
    assert renderer.fonts.width(drawn, 30) >= 0


def test_capitals_only_where_the_script_has_them() -> None:
    assert upper_cased("straße привет γειά") == "STRASSE ПРИВЕТ ΓΕΙΆ"
    for uncased in ("გამარჯობა", "ꭰꭱꭲ", "こんにちは", "مرحبا", "नमस्ते", "😂 👍🏽"):
        assert upper_cased(uncased) == uncased


def test_cjk_breaks_between_characters_not_only_at_spaces(renderer: Renderer) -> None:
    text = "日本語のミームは、スペースがなくても折り返されます。"
    needs_fonts(renderer, text)
    box = Box(0.3, 0.0, 0.4, 1.0)
    fitted = renderer.fit(renderer.prepare(text, True), box, (320, 300))
    assert len(fitted.lines) > 2 and not fitted.truncated and "".join(fitted.lines) == text
    assert not any(line.startswith(("、", "。")) for line in fitted.lines)
    assert fitted.size > renderer.fit("x" * 20, box, (320, 300)).size // 2


# --- caching, formats, errors ----------------------------------------------------------------------


class CountingRenderer(Renderer):
    """Counts file reads, to prove the caches hold."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.reads: list[Path] = []
        self._reads_lock = threading.Lock()
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _read_bytes(self, path: Path) -> bytes:
        with self._reads_lock:
            self.reads.append(path)
        return super()._read_bytes(path)


def test_second_render_reads_no_files(images: Path) -> None:
    renderer = CountingRenderer(images)
    meme = template("plain.png", [BOXES["top"], BOXES["bottom"]])
    renderer.render(meme, ["first render", "loads the image and the font"])
    first = list(renderer.reads)
    assert images / "plain.png" in first and anton_font().path in first
    renderer.render(meme, ["first render", "loads the image and the font"])
    renderer.render(meme, ["other text at other sizes", LONG_CAPTION])
    assert renderer.reads == first, "template image and fonts must come from the cache"


def test_threads_share_one_renderer(images: Path) -> None:
    renderer = CountingRenderer(images)
    meme = template("plain.png", [BOXES["top"], BOXES["bottom"]])
    jobs = [[f"caption {i}", LONG_CAPTION[: 20 * i]] for i in range(8)]
    expected = [renderer.render(meme, texts).data for texts in jobs]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda texts: renderer.render(meme, texts).data, jobs * 2)) == expected * 2


def test_large_photos_become_jpeg_capped_at_max_side(images: Path, renderer: Renderer) -> None:
    big = renderer.render(template("big.png", [BOXES["top"]], size=(1600, 1200)), ["big"])
    assert (big.format, big.mime, big.extension) == ("jpeg", "image/jpeg", ".jpg")
    assert (big.width, big.height) == (800, 600) == decode(big).size
    capped = Renderer(images, max_side=300).render(
        template("big.png", [BOXES["top"]], size=(1600, 1200)), ["x"]
    )
    assert (capped.width, capped.height) == (300, 225)


def test_small_templates_stay_png_and_are_not_blown_up(renderer: Renderer) -> None:
    small = renderer.render(template("small.png", [BOXES["top"]], size=(200, 150)), ["small"])
    assert (small.format, small.mime, small.extension) == ("png", "image/png", ".png")
    assert small.data.startswith(b"\x89PNG") and (small.width, small.height) == (200, 150)


def test_missing_or_broken_template_images_raise_clear_errors(renderer: Renderer) -> None:
    with pytest.raises(TemplateImageMissing, match="template_images"):
        renderer.render(template("absent.png", [BOXES["top"]]), ["x"])
    with pytest.raises(RenderError, match="not a readable image"):
        renderer.render(template("broken.jpg", [BOXES["top"]]), ["x"])
    with pytest.raises(ValueError, match="bare"):  # no template can point outside the images folder
        template("../images/plain.png", [BOXES["top"]])


# --- the command line -------------------------------------------------------------------------------

CATALOG = """
[[template]]
slug = "drake-hotline-bling"
name = "Drake Hotline Bling"
imgflip_id = 181913649
dataset_name = "Drake-Hotline-Bling"
image = "Drake-Hotline-Bling.jpg"
width = 1200
height = 1200
aliases = ["drake"]
has_data = true
[[template.box]]
x = 0.5
y = 0.0
w = 0.5
h = 0.5
[[template.box]]
x = 0.5
y = 0.5
w = 0.5
h = 0.5

[[template]]
slug = "change-my-mind"
name = "Change My Mind"
imgflip_id = 129242436
dataset_name = "Change-My-Mind"
image = "Change-My-Mind.jpg"
width = 482
height = 361
aliases = []
has_data = true
[[template.box]]
x = 0.43
y = 0.56
w = 0.44
h = 0.2
color = "#000000"
outline = ""
angle = 7.0
"""


@pytest.fixture
def cli_config(tmp_path: Path) -> Path:
    (tmp_path / "templates.toml").write_text(CATALOG)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[paths]\ncatalog = "{tmp_path / "templates.toml"}"\n'
        f'template_images = "{SHARED_IMAGES}"\noutput_dir = "{tmp_path / "memes"}"\n'
        f'dataset = "{tmp_path / "dataset"}"\n'
    )
    return config


def test_cli_unknown_template_suggests_and_exits_2(cli_config: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--config", str(cli_config), "render", "xyzzy plugh", "text"]) == 2
    err = capsys.readouterr().err
    assert 'No template "xyzzy plugh"' in err and "Did you mean" in err
    assert "change-my-mind" in err and "drake-hotline-bling" in err


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="needs the shared template images")
def test_cli_renders_to_the_requested_file_and_format(
    cli_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "drake.png"
    assert main(["--config", str(cli_config), "render", "drake", "Tabs", "Spaces", "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and max(image.size) == 800
    assert main(["--config", str(cli_config), "render", "change-my-mind", "pineapple", "--as-typed"]) == 0
    written = Path(capsys.readouterr().out.split()[-1])
    assert written.parent == tmp_path / "memes" and written.suffix in (".png", ".jpg")
    assert main(["--config", str(cli_config), "render", "drake", "x", "-o", str(tmp_path / "m.gif")]) == 2


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="needs the shared template images")
def test_cli_draws_every_box_and_refuses_more(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "buttons.png"
    assert (
        main(["render", "two-buttons", "fix the bug", "ship it anyway", "me, sweating", "-o", str(out)]) == 0
    )
    assert (
        main(["render", "two-buttons", "fix the bug", "ship it anyway", "-o", str(tmp_path / "two.png")]) == 0
    )
    three, two = (Image.open(p).convert("RGB") for p in (out, tmp_path / "two.png"))
    changed = ImageChops.difference(three, two).getbbox()
    assert changed is not None and changed[1] > three.height / 2, "the third box is on the sweating man"
    capsys.readouterr()
    assert main(["render", "two-buttons", "a", "b", "c", "d", "-o", str(tmp_path / "four.png")]) == 2
    assert "Two Buttons has 3 text boxes, and you gave 4" in capsys.readouterr().err
    assert not (tmp_path / "four.png").exists()
    assert main(["render", "drake", "\U0001e290", "ok", "-o", str(tmp_path / "glyph.png")]) == 0
    err = capsys.readouterr().err
    assert "U+1E290" in err or Renderer(SHARED_IMAGES).fonts.font_for("\U0001e290") is not None


def test_doctor_says_what_is_missing_and_what_to_install(capsys: pytest.CaptureFixture) -> None:
    lines, wanted = doctor_check(FontSet(anton_font()))
    assert any(line.startswith("  ok  Latin") for line in lines)
    assert any("NO  Japanese" in line and "fonts-noto-cjk" in line for line in lines)
    assert {"fonts-noto-core", "fonts-noto-cjk", "fonts-noto-color-emoji"} <= wanted
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert "Scripts:" in out and "Emoji:" in out and "Anton" in out
    assert (code == 0) == ("Everything above can be drawn." in out)
    if code:
        assert "apt-get install" in out


def test_gallery_caption_is_a_voted_clean_one_that_fills_every_box(tmp_path: Path) -> None:
    memes = [
        {"boxes": ["one box only"], "metadata": {"img-votes": "9,999"}},
        {"boxes": ["vote for trump", "now"], "metadata": {"img-votes": "5,000"}},
        {"boxes": ["popular", "caption"], "metadata": {"img-votes": "1,200"}},
        {"boxes": ["less", "popular"], "metadata": {"img-votes": "3"}},
    ]
    (tmp_path / "memes").mkdir()
    (tmp_path / "memes" / "Plain.json").write_text(json.dumps(memes))
    two_boxes = [BOXES["top"], BOXES["bottom"]]
    with_data = dataclasses.replace(template("plain.png", two_boxes), has_data=True)
    assert typical_caption(with_data, tmp_path) == ["popular", "caption"]
    assert typical_caption(template("plain.png", two_boxes), tmp_path) == ["top text", "bottom text"]


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="needs the shared template images")
def test_cli_gallery_writes_a_contact_sheet_of_every_template(cli_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.jpg"
    assert (
        main(["--config", str(cli_config), "gallery", "-o", str(out), "--cell", "100", "--columns", "2"]) == 0
    )
    with Image.open(out) as sheet:
        assert sheet.format == "JPEG" and sheet.width == 200 and 100 < sheet.height < 130
    assert main(["--config", str(cli_config), "gallery", "-o", str(tmp_path / "sheet.bmp")]) == 2


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="needs the shared template images")
def test_cli_gallery_model_shows_the_captions_the_bot_serves(
    cli_config: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from common.config import load_config

    config = load_config(cli_config)
    templates = load_catalog(config.catalog_path).templates
    captions = model_captions(config, templates, tiny_checkpoint, seed=0)
    # The synthetic captions the tiny model memorised, a box each, not the dataset's.
    assert [len(c) for c in captions] == [len(t.boxes) for t in templates]
    assert all(c[0].strip() for c in captions)
    assert captions == model_captions(config, templates, tiny_checkpoint, seed=0)  # seeded
    base = ["--config", str(cli_config), "gallery", "--model", "--cell", "100", "--columns", "2"]
    out = tmp_path / "model.png"
    assert main([*base, "--checkpoint", str(tiny_checkpoint), "-o", str(out)]) == 0
    with Image.open(out) as sheet:
        assert sheet.size[0] == 200
    assert main([*base, "--checkpoint", str(tmp_path / "none.pt"), "-o", str(out)]) == 2
    assert "no model yet" in capsys.readouterr().err


# --- reference renders ----------------------------------------------------------------------------

REFERENCE_MAX_SIDE = 300


def reference_cases() -> dict[str, tuple[Template, list[str], bool | None]]:
    """Real templates with hand-set boxes (not the catalog's, so only renderer changes show)."""
    return {
        "ancient-aliens": (
            template(
                "Ancient-Aliens.jpg",
                [Box(0.0, 0.0, 1.0, 0.25), Box(0.0, 0.75, 1.0, 0.25)],
                (500, 437),
                "ancient-aliens",
            ),
            ["I'm not saying it was aliens", "but it was aliens"],
            None,
        ),
        "change-my-mind": (
            template(
                "Change-My-Mind.jpg",
                [Box(0.43, 0.56, 0.44, 0.2, color="#000000", outline="", angle=7.0)],
                (482, 361),
                "change-my-mind",
            ),
            ["Pineapple on pizza is a crime"],
            None,
        ),
        "drake-as-typed": (
            template(
                "Drake-Hotline-Bling.jpg",
                [Box(0.5, 0.0, 0.5, 0.5, align="left"), Box(0.5, 0.5, 0.5, 0.5, align="left")],
                (1200, 1200),
                "drake-hotline-bling",
            ),
            ["Writing the tests after the code", "Writing the tests first\n(like a grown-up)"],
            False,
        ),
        # The catalog's own layouts from here on: a layout change shows in these too.
        **{
            name: (catalog().get(slug), texts, None)
            for name, (slug, texts) in {
                "two-buttons-three-boxes": ("two-buttons", ["fix the bug", "ship it", "me, sweating"]),
                "confession-bear-top-bottom": (
                    "confession-bear",
                    ["i never read the docs", "i just ask the bot"],
                ),
                "drake-emoji": ("drake-hotline-bling", ["🔥🔥🔥 emoji everywhere 😂", "👍🏽🇯🇵👩\u200d💻"]),
                "cjk-dark": ("ill-just-wait-here", ["こんにちは世界", "你好，世界 · 안녕하세요"]),
                "cjk-light": ("drake-hotline-bling", ["日本語のミーム", "中文字幕 한국어"]),
                "rtl-dark": ("and-everybody-loses-their-minds", ["مرحبا بالعالم", "שלום עולם"]),
                "rtl-light": ("drake-hotline-bling", ["مرحبا بالعالم 2024", "שלום עולם!"]),
                "hindi-thai-dark": ("finding-neverland", ["नमस्ते दुनिया", "สวัสดีชาวโลก", "नमस्ते · สวัสดี"]),
                "hindi-thai-light": ("marked-safe-from", ["नमस्ते दुनिया", "สวัสดีชาวโลก"]),
            }.items()
        },
        # A user's own picture: the classic layout for its shape, and the band above a panorama.
        **(
            {
                "picture-top-bottom": (
                    Template.from_image_bytes(picture_from("Ancient-Aliens.jpg", (0, 0, 500, 400))),
                    ["when the code works", "and you don't know why"],
                    None,
                ),
                "picture-band": (
                    Template.from_image_bytes(picture_from("Ancient-Aliens.jpg", (0, 100, 500, 260))),
                    ["When the panorama is so wide the caption needs its own band"],
                    None,
                ),
            }
            if SHARED_IMAGES.is_dir()
            else {}
        ),
    }


def picture_from(file: str, box: tuple[int, int, int, int]) -> bytes:
    """A crop of a shared template image, as the PNG bytes a user would send."""
    with Image.open(SHARED_IMAGES / file) as image:
        buffer = io.BytesIO()
        image.convert("RGB").crop(box).save(buffer, "PNG")
        return buffer.getvalue()


@functools.cache
def catalog() -> Catalog:
    return load_catalog(Config().catalog_path)


@functools.cache
def reference_renderer() -> Renderer:
    return Renderer(SHARED_IMAGES, max_side=REFERENCE_MAX_SIDE)


def render_reference(name: str) -> Image.Image:
    tmpl, texts, uppercase = reference_cases()[name]
    meme = reference_renderer().render(tmpl, texts, uppercase=uppercase)
    return decode(meme)


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="needs the shared template images")
@pytest.mark.parametrize("name", list(reference_cases()))
def test_renders_match_the_references(name: str, tmp_path: Path) -> None:
    needs_fonts(reference_renderer(), *reference_cases()[name][1])
    fresh = render_reference(name)
    with Image.open(RENDERS / f"{name}.png") as stored:
        reference = stored.convert("RGB")
    assert fresh.size == reference.size, f"{name}: size {fresh.size} != reference {reference.size}"
    diff = ImageChops.difference(fresh, reference).convert("L")
    histogram = diff.histogram()
    mean = sum(v * n for v, n in enumerate(histogram)) / (fresh.width * fresh.height)
    changed = sum(histogram[48:]) / (fresh.width * fresh.height)
    if mean > 1.0 or changed > 0.003:
        fresh.save(tmp_path / f"{name}.png")
        pytest.fail(
            f"{name}: fresh render differs from tests/renders/{name}.png (mean diff {mean:.2f}, "
            f"{changed:.2%} of pixels changed); fresh image: {tmp_path / f'{name}.png'}. If the change is "
            "intended, look at it, then run `.venv/bin/python tests/test_render.py --update-renders`."
        )


if __name__ == "__main__":
    if sys.argv[1:] != ["--update-renders"]:
        sys.exit("usage: .venv/bin/python tests/test_render.py --update-renders")
    RENDERS.mkdir(exist_ok=True)
    for case in reference_cases():
        render_reference(case).save(RENDERS / f"{case}.png", optimize=True)
        print(RENDERS / f"{case}.png")
