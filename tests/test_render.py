"""The renderer: text stays in its box, fits, falls back or drops characters, caches, encodes.

Reference renders live in tests/renders/; after an intended change in how memes look,
regenerate them with `.venv/bin/python tests/test_render.py --update-renders` and look at them.
"""

from __future__ import annotations

import dataclasses
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

from bot.catalog import Box, Template
from bot.cli import main
from bot.config import Config
from bot.fonts import FontFile, FontSet, anton_font
from bot.render import RenderedMeme, Renderer, RenderError, TemplateImageMissing, assign_texts
from bot.render_cli import typical_caption
from bot.textfit import ELLIPSIS, clean_caption

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
        image=image,
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


def test_extra_texts_join_the_last_box_and_missing_ones_leave_boxes_empty(renderer: Renderer) -> None:
    assert assign_texts(["a", "b", "c"], 2) == ["a", "b\nc"]
    assert assign_texts(["a"], 3) == ["a", "", ""]
    assert assign_texts("one string", 2) == ["one string", ""]
    boxes = [Box(0.0, 0.0, 1.0, 0.3), Box(0.0, 0.5, 1.0, 0.5)]
    meme = renderer.render(template("plain.png", boxes), ["top", "bottom", "more"])
    assert ink_bbox(meme, box_px(boxes[1], (320, 300))) is not None
    bottom = renderer.fit(
        renderer.prepare(assign_texts(["top", "bottom", "more"], 2)[1], True), boxes[1], (320, 300)
    )
    assert bottom.lines == ("BOTTOM", "MORE")


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


def test_the_font_comes_from_the_installed_package(renderer: Renderer) -> None:
    packaged = Path(str(importlib.resources.files("fontpkg_anton").joinpath("files/Anton-Regular.ttf")))
    assert renderer.fonts.files[0] == anton_font() == FontFile(packaged)
    assert "fontpkg_anton" in packaged.parts
    assert renderer.fonts.font(0, 40).getname() == ("Anton", "Regular")


@pytest.mark.skipif(not DEJAVU.is_file(), reason="needs fonts-dejavu-core")
def test_characters_anton_lacks_use_a_fallback_font_or_are_dropped() -> None:
    fonts = FontSet(anton_font(), [FontFile(DEJAVU)])
    assert fonts.drawable("ABC Жж 中文 x") == "ABC Жж  x"  # DejaVu has Cyrillic, nobody here has CJK
    runs = fonts.runs("HI ЖЖ", 30)
    assert [f.getname()[0] for f, _ in runs] == ["Anton", "DejaVu Sans"]
    assert FontSet(anton_font()).drawable("Жж!") == "!"


@pytest.mark.skipif(not DEJAVU.is_file(), reason="needs fonts-dejavu-core")
def test_undrawable_text_draws_nothing_rather_than_tofu(images: Path) -> None:
    renderer = Renderer(images, fallback_fonts=[DEJAVU])
    if renderer.fonts.font_for("中") is not None:
        pytest.skip("a CJK font is installed here")
    meme = renderer.render(template("plain.png", [BOXES["top"]]), ["中文中文"])
    assert ink_bbox(meme) is None


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
    with pytest.raises(RenderError, match="bare file name"):
        renderer.render(template("../images/plain.png", [BOXES["top"]]), ["x"])


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
    }


def render_reference(name: str) -> Image.Image:
    tmpl, texts, uppercase = reference_cases()[name]
    meme = Renderer(SHARED_IMAGES, max_side=REFERENCE_MAX_SIDE).render(tmpl, texts, uppercase=uppercase)
    return decode(meme)


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="needs the shared template images")
@pytest.mark.parametrize("name", list(reference_cases()))
def test_renders_match_the_references(name: str, tmp_path: Path) -> None:
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
