"""The template catalog: the real data/templates.toml against the dataset and the images,
name lookup as users type it, search for autocomplete, validation of a bad file, the CLI.
"""

from __future__ import annotations

import io
import json
import random
import tomllib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from cli.main import main
from common.catalog import Catalog, CatalogError, Template, UnknownTemplate, load_catalog, parse_catalog
from common.config import Config, load_config
from common.template import CatalogImage
from training.make_catalog import format_catalog

CLASSIC_TOP = (0.02, 0.02, 0.96, 0.22)
CLASSIC_BOTTOM = (0.02, 0.76, 0.96, 0.22)


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config()


@pytest.fixture(scope="module")
def catalog(config: Config) -> Catalog:
    return load_catalog(config.catalog_path)


@pytest.fixture(scope="module")
def box_counts(config: Config, catalog: Catalog) -> dict[str, Counter[int]]:
    """dataset name -> how many of its memes have each number of boxes (the data is read once)."""
    counts = {}
    for t in catalog.templates:
        path = config.dataset_dir / "memes" / f"{t.dataset_name}.json"
        if path.exists():
            memes = json.loads(path.read_text(encoding="utf-8"))
            counts[t.dataset_name] = Counter(len(m["boxes"]) for m in memes)
    return counts


def percentile(counts: Counter[int], share: float) -> int:
    """The smallest box count that at least `share` of the memes stay within."""
    total = sum(counts.values())
    seen = 0
    for n in sorted(counts):
        seen += counts[n]
        if seen >= share * total:
            return n
    raise ValueError("no memes")


def rect(box) -> tuple[float, float, float, float]:
    return (box.x, box.y, box.w, box.h)


# --- the real catalog ----------------------------------------------------------------------


def test_catalog_has_the_100_popular_templates(catalog: Catalog, config: Config) -> None:
    assert len(catalog.templates) == 100
    popular = (config.dataset_dir / "popular_100_memes.csv").read_text(encoding="cp1252")
    ids = {int(line.split('","')[0].strip('"')) for line in popular.splitlines()[1:] if line}
    assert {t.imgflip_id for t in catalog.templates} == ids


def test_every_image_exists_and_has_the_catalog_size(catalog: Catalog, config: Config) -> None:
    for t in catalog.templates:
        path = catalog.image_path(t, config.template_images_dir)
        assert path.parent == config.template_images_dir
        with Image.open(path) as image:  # raises if missing
            assert image.size == (t.width, t.height), t.slug


def test_has_data_says_whether_captions_exist(catalog: Catalog, config: Config) -> None:
    for t in catalog.templates:
        assert t.has_data == (config.dataset_dir / "memes" / f"{t.dataset_name}.json").exists(), t.slug
    # The dataset's README names twelve templates without caption files.
    assert sum(not t.has_data for t in catalog.templates) == 12


def test_every_template_offers_the_boxes_people_fill_on_it(
    catalog: Catalog, box_counts: dict[str, Counter[int]]
) -> None:
    """At least as many boxes as 80% of a template's memes use: a second line is never pushed
    into the first box, a third panel never left without a place."""
    assert len(box_counts) == 88
    short = {
        t.slug: (len(t.boxes), percentile(box_counts[t.dataset_name], 0.8))
        for t in catalog.templates
        if t.dataset_name in box_counts and len(t.boxes) < percentile(box_counts[t.dataset_name], 0.8)
    }
    assert short == {}, "slug: (boxes in catalog, 80th percentile of its memes' box counts)"


def test_box_counts_people_use_often_have_a_box(
    catalog: Catalog, box_counts: dict[str, Counter[int]]
) -> None:
    """Beyond the 80th percentile: a box count that 15% of the memes use gets its boxes too
    (two-buttons' sweating man: 2,001 of 12,007 memes)."""
    for t in catalog.templates:
        counts = box_counts.get(t.dataset_name)
        if counts:
            total = sum(counts.values())
            used = max(n for n, k in counts.items() if k >= 0.15 * total)
            assert len(t.boxes) >= used, t.slug


def test_famous_layouts_put_text_where_the_meme_has_it(catalog: Catalog) -> None:
    drake = catalog.get("drake-hotline-bling")
    assert len(drake.boxes) == 2
    for box in drake.boxes:  # the white panels on the right, dark text
        assert box.x >= 0.5 and box.color == "#000000" and box.outline == ""
    assert drake.boxes[0].y < 0.5 <= drake.boxes[1].y

    (left, right, sweating) = catalog.get("two-buttons").boxes
    assert left.y + left.h < 0.25 and right.y + right.h < 0.25  # the buttons, on the top panel
    assert left.x < right.x
    assert sweating.y > 0.5 and sweating.outline  # the sweating man, classic white text

    for slug in ("confession-bear", "ancient-aliens", "scumbag-steve", "x-all-the-y"):
        (top, bottom) = catalog.get(slug).boxes
        assert (rect(top), rect(bottom)) == (CLASSIC_TOP, CLASSIC_BOTTOM), slug

    panels = [b.y for b in catalog.get("finding-neverland").boxes]
    assert len(panels) == 3 and panels == sorted(panels)  # one box per panel, top to bottom

    boyfriend = catalog.get("distracted-boyfriend").boxes
    assert len(boyfriend) == 3
    assert [b.x for b in boyfriend] == sorted(b.x for b in boyfriend)  # other woman, him, girlfriend

    (sign,) = catalog.get("change-my-mind").boxes
    assert sign.color == "#000000" and sign.outline == "" and sign.angle != 0
    assert sign.x > 0.35 and sign.y > 0.5  # the sign on the desk, bottom right

    (top, bottom) = catalog.get("one-does-not-simply").boxes
    assert (rect(top), rect(bottom)) == (CLASSIC_TOP, CLASSIC_BOTTOM)


def test_boxes_do_not_overlap_within_a_template(catalog: Catalog) -> None:
    def overlap(a, b) -> bool:
        return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h

    for t in catalog.templates:
        for i, a in enumerate(t.boxes):
            for b in t.boxes[i + 1 :]:
                assert not overlap(a, b), t.slug


def test_aliases_are_lowercase_unique_and_name_only_their_template(catalog: Catalog) -> None:
    for t in catalog.templates:
        assert all(a == a.lower() for a in t.aliases), t.slug
        assert len(set(t.aliases)) == len(t.aliases), t.slug
        for alias in t.aliases:
            assert catalog.lookup(alias) is t, alias


def test_the_toml_survives_a_round_trip_through_the_generator(catalog: Catalog) -> None:
    again = parse_catalog(tomllib.loads(format_catalog(catalog.templates)))
    assert again.templates == catalog.templates


# --- lookup ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "slug"),
    [
        ("change-my-mind", "change-my-mind"),  # slug
        ("Change My Mind", "change-my-mind"),  # name
        ("Change-My-Mind", "change-my-mind"),  # dataset name
        ("  CHANGE_my mind ", "change-my-mind"),  # case and separators
        ("changemymind", "change-my-mind"),
        ("prove me wrong", "change-my-mind"),  # alias
        ("Y'all Got Any More Of That", "yall-got-any-more-of-that"),
        ("yall got any more of that", "yall-got-any-more-of-that"),
        ("drakeposting", "drake-hotline-bling"),
        ("chnage my mind", "change-my-mind"),  # typos
        ("drak", "drake-hotline-bling"),
        ("drke", "drake-hotline-bling"),
        ("distracted boyfreind", "distracted-boyfriend"),
        ("surprized pikachu", "surprised-pikachu"),
        ("pikachu", "surprised-pikachu"),  # one distinctive word
        ("yelling cat", "woman-yelling-at-cat"),
        ("nobody cares", "see-nobody-cares"),  # not Imagination Spongebob, whose dataset alias it was
    ],
)
def test_lookup_finds_what_users_type(catalog: Catalog, query: str, slug: str) -> None:
    assert catalog.lookup(query).slug == slug


@pytest.mark.parametrize("query", ["spongebob", "cat", "gru", "flying spaghetti monster", "x", ""])
def test_lookup_refuses_to_guess_and_offers_three_suggestions(catalog: Catalog, query: str) -> None:
    with pytest.raises(UnknownTemplate) as caught:
        catalog.lookup(query)
    assert caught.value.query == query
    assert len(caught.value.suggestions) == 3
    assert all(isinstance(t, Template) for t in caught.value.suggestions)


def test_unknown_template_message_names_the_closest_slugs(catalog: Catalog) -> None:
    with pytest.raises(UnknownTemplate) as caught:
        catalog.lookup("spongebob")
    suggested = {t.slug for t in caught.value.suggestions}
    assert suggested == {"mocking-spongebob", "imagination-spongebob", "spongebob-ight-imma-head-out"}
    first, second, third = (t.slug for t in caught.value.suggestions)
    assert str(caught.value) == f'No template "spongebob". Did you mean: {first}, {second}, {third}?'


@pytest.mark.parametrize("query", ["../../etc/passwd", "/etc/passwd", "..\\..\\x.jpg", "~/.ssh/id_rsa"])
def test_path_like_names_are_just_unknown(catalog: Catalog, query: str) -> None:
    with pytest.raises(UnknownTemplate):
        catalog.lookup(query)


def test_a_file_name_as_query_still_uses_the_catalogs_own_image(catalog: Catalog, tmp_path: Path) -> None:
    found = catalog.lookup("../Drake-Hotline-Bling.jpg/..")  # resolves by its words, not as a path
    assert catalog.image_path(found, tmp_path) == tmp_path / "Drake-Hotline-Bling.jpg"


def test_a_huge_query_is_answered_quickly(catalog: Catalog) -> None:
    with pytest.raises(UnknownTemplate) as caught:
        catalog.lookup("meme " * 10_000)
    assert len(str(caught.value)) < 200


def test_get_takes_exact_slugs_only(catalog: Catalog) -> None:
    assert catalog.get("doge").name == "Doge"
    with pytest.raises(KeyError):
        catalog.get("Doge")


# --- search ----------------------------------------------------------------------------------


def test_empty_search_lists_the_catalog_in_order(catalog: Catalog) -> None:
    assert catalog.search("") == list(catalog.templates[:25])
    assert catalog.search("", limit=100) == list(catalog.templates)


def test_search_matches_prefixes_typos_and_aliases(catalog: Catalog) -> None:
    assert catalog.search("dra")[0].slug == "drake-hotline-bling"  # typing in progress
    assert catalog.search("pikachoo")[0].slug == "surprised-pikachu"
    assert catalog.search("crowder")[0].slug == "change-my-mind"  # alias "steven crowder's sign"
    assert {t.slug for t in catalog.search("spongebob")[:3]} == {
        "mocking-spongebob",
        "imagination-spongebob",
        "spongebob-ight-imma-head-out",
    }


def test_search_returns_at_most_the_limit_and_nothing_for_noise(catalog: Catalog) -> None:
    assert len(catalog.search("a")) <= 25  # Discord autocomplete shows 25 at most
    assert len(catalog.search("the", limit=5)) == 5
    assert catalog.search("zzzqqq") == []


# --- validation --------------------------------------------------------------------------------

GOOD = """
[[template]]
slug = "plain"
name = "Plain"
imgflip_id = 1
dataset_name = "Plain"
image = "Plain.jpg"
width = 100
height = 80
aliases = ["simple one"]
has_data = false

[[template.box]]
x = 0.02
y = 0.02
w = 0.96
h = 0.22
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "templates.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_minimal_catalog_loads_with_box_defaults(tmp_path: Path) -> None:
    (t,) = load_catalog(write(tmp_path, GOOD)).templates
    (box,) = t.boxes
    assert (box.align, box.color, box.outline, box.angle, box.uppercase) == (
        "center",
        "#ffffff",
        "#000000",
        0.0,
        True,
    )


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("x = 0.02", "x = 1.5"), "x = 1.5"),
        (("w = 0.96", "w = 0.99"), "right edge"),
        (("h = 0.22", "h = 0"), "h = 0"),
        (("h = 0.22", 'h = 0.22\ncolor = "not-a-colour"'), "not a colour"),
        (("h = 0.22", 'h = 0.22\noutline = "#12"'), "not a colour"),
        (("h = 0.22", 'h = 0.22\nalign = "middle"'), "align"),
        (("h = 0.22", "h = 0.22\ncolour = 1"), "unknown field 'colour'"),
        (('image = "Plain.jpg"', 'image = "../../etc/passwd"'), "bare"),
        (('slug = "plain"', 'slug = "Plain Meme"'), "slug"),
        (("width = 100", 'width = "100"'), "whole number"),
    ],
)
def test_a_bad_catalog_is_refused_naming_the_template(
    tmp_path: Path, change: tuple[str, str], complaint: str
) -> None:
    old, new = change
    bad = GOOD.replace(old, new, 1)
    with pytest.raises(CatalogError) as caught:
        load_catalog(write(tmp_path, bad))
    message = str(caught.value)
    assert complaint in message
    assert "templates.toml" in message
    assert "template " in message


LIKE = GOOD.replace("has_data = false", "has_data = true") + GOOD.replace(
    'slug = "plain"', 'slug = "other"'
).replace("imgflip_id = 1", "imgflip_id = 2").replace(
    'dataset_name = "Plain"', 'dataset_name = "Other"'
).replace('["simple one"]', "[]")


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ('caption_like = "Nowhere"', "no template with caption data"),
        ('caption_like = "Other"', "no template with caption data"),  # itself, without data
        ("caption_boxes = [1]", "set caption_like too"),
        ('caption_like = "Plain"\ncaption_boxes = [2]', "Plain has 1 boxes"),
        ('caption_like = "Plain"\ncaption_boxes = [1, 1]', "one box number"),
        ('openings = ["one does not simply", ""]', "non-empty"),
        ('openings = ["a|b"]', "fills more than its 1 boxes"),
        ('caption_like = "Plain"\ncaption_boxes = [1]\nopenings = ["x"]', "not with caption_boxes"),
        ('closing = "but that\'s none of my business"', "last of two or more boxes"),  # one box
    ],
)
def test_how_a_template_without_data_is_captioned_is_checked(
    tmp_path: Path, fields: str, complaint: str
) -> None:
    bad = LIKE.replace("has_data = false", f"has_data = false\n{fields}")
    with pytest.raises(CatalogError, match="template other") as caught:
        load_catalog(write(tmp_path, bad))
    assert complaint.replace("Plain has", "plain has") in str(caught.value)
    # Only a template without data is captioned as another: one with data has its own captions.
    with pytest.raises(CatalogError, match="template plain: .*without data"):
        load_catalog(write(tmp_path, LIKE.replace("has_data = true", 'has_data = true\nopenings = ["x"]')))


def test_a_template_without_data_is_asked_for_as_the_catalog_says(catalog: Catalog) -> None:
    """Distracted Boyfriend is captioned as Left Exit 12 Off Ramp (obligation | temptation | me)
    and shown in its own order (temptation, me, obligation); One Does Not Simply starts with its
    phrase. The user's own words are never replaced, nor put in another box."""
    rng = random.Random(0)
    boyfriend = catalog.get("distracted-boyfriend")
    plan = boyfriend.caption_plan("", rng)
    assert (plan.model_template, plan.prefix) == ("Left-Exit-12-Off-Ramp", "")
    assert plan.arrange(["homework", "memes", "me"]) == ["memes", "me", "homework"]
    assert plan.arrange(["homework"]) == ["", "", "homework"]
    typed = boyfriend.caption_plan("a new phone|", rng)
    assert (typed.model_template, typed.prefix, typed.order) == ("Distracted-Boyfriend", "a new phone|", ())
    simply = catalog.get("one-does-not-simply").caption_plan("", rng)
    assert (simply.model_template, simply.prefix) == ("One-Does-Not-Simply", "one does not simply|")
    assert (
        catalog.get("one-does-not-simply").caption_plan("walk into", rng).prefix
        == "one does not simply|walk into"
    )
    assert (
        catalog.get("one-does-not-simply").caption_plan("a | b", rng).prefix == "a | b"
    )  # every box laid out
    assert catalog.get("futurama-fry").caption_plan("Not sure if", rng).prefix == "Not sure if"
    raptor = catalog.get("philosoraptor").caption_plan("if", rng)
    assert (raptor.model_template, raptor.prefix) == ("Roll-Safe-Think-About-It", "if")
    business = catalog.get("but-thats-none-of-my-business")
    kermit = business.caption_plan("", rng)
    assert (kermit.model_template, kermit.model_boxes(2)) == ("Confession-Bear", 1)
    assert kermit.arrange(["i like tea"]) == ["i like tea", "but that's none of my business"]
    typed = business.caption_plan("I like tea but that's none of my business!", rng)
    assert (typed.prefix, typed.arrange(["i like tea"])) == (
        "I like tea",
        ["i like tea", "but that's none of my business!"],
    )
    own = business.caption_plan("i like tea|so do you", rng)  # their words reach the last box
    assert (own.model_boxes(2), own.arrange(["i like tea", "so do you"])) == (2, ["i like tea", "so do you"])
    drake = catalog.get("drake-hotline-bling").caption_plan("", rng)
    assert (drake.model_template, drake.prefix, drake.order) == ("Drake-Hotline-Bling", "", ())
    # Every template without data that says how it is captioned names one the model knows.
    for t in catalog.templates:
        assert not t.caption_like or catalog.get(t.caption_like.lower()).has_data


def test_a_set_phrase_names_its_template(catalog: Catalog) -> None:
    assert catalog.by_phrase("One does NOT simply... walk into Mordor").slug == "one-does-not-simply"
    assert catalog.by_phrase("one does not simply").slug == "one-does-not-simply"
    assert catalog.by_phrase("not sure if | or just").slug == "futurama-fry"
    assert (
        catalog.by_phrase("I don\u2019t always test my code").slug == "the-most-interesting-man-in-the-world"
    )
    assert catalog.by_phrase("cake | but that's none of my business!").slug == "but-thats-none-of-my-business"
    for text in ("", "does not simply", "one does not", "i'm not sure if", "none of my business yet"):
        assert catalog.by_phrase(text) is None, text


def test_duplicate_slugs_and_ambiguous_aliases_are_refused(tmp_path: Path) -> None:
    second = GOOD.replace("imgflip_id = 1", "imgflip_id = 2").replace(
        'dataset_name = "Plain"', 'dataset_name = "Plain-2"'
    )
    with pytest.raises(CatalogError, match="plain"):
        load_catalog(write(tmp_path, GOOD + second))
    other = second.replace('slug = "plain"', 'slug = "other"').replace('name = "Plain"', 'name = "Other"')
    with pytest.raises(CatalogError, match="simple one"):  # the same alias on two templates
        load_catalog(write(tmp_path, GOOD + other))


def test_a_missing_or_broken_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nope.toml")
    with pytest.raises(CatalogError, match="not valid TOML"):
        load_catalog(write(tmp_path, "[[template]\n"))


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "grey").save(buffer, "PNG")
    return buffer.getvalue()


def test_image_path_never_leaves_the_images_folder(catalog: Catalog, tmp_path: Path) -> None:
    doge = catalog.get("doge")
    assert catalog.image_path(doge, tmp_path) == tmp_path / "Doge.jpg"
    with pytest.raises(ValueError):  # not even a Template built by hand can name such a file
        replace(doge, image=CatalogImage("../../etc/passwd"))
    with pytest.raises(ValueError):  # a user's picture has no file in the folder at all
        catalog.image_path(Template.from_image_bytes(png_bytes()), tmp_path)


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_lists_all_100_templates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("100 templates in the catalog")
    rows = [line.split() for line in out.splitlines()[1:] if line.strip() and "templates in" not in line]
    assert len(rows) == 100
    drake = next(r for r in rows if r[0] == "drake-hotline-bling")
    assert drake[-2:] == ["2", "yes"]


def test_cli_query_lists_matches_and_says_when_nothing_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates", "spongebob"]) == 0
    out = capsys.readouterr().out
    assert "mocking-spongebob" in out and "drake-hotline-bling" not in out
    assert main(["templates", "zzzqqq"]) == 1
    assert "nothing matches" in capsys.readouterr().err


def test_make_catalog_check_flags_a_layout_with_fewer_boxes_than_people_fill(
    catalog: Catalog, tmp_path: Path
) -> None:
    """`python -m training.make_catalog --check`: the same rule as the tests above, for whoever
    edits the layouts. 30% of these memes use a second box: one box is too few, three are fine."""
    from training.make_catalog import boxes_people_fill, check_box_counts

    memes = tmp_path / "memes"
    memes.mkdir()
    data = [{"boxes": ["top"]}] * 7 + [{"boxes": ["top", "bottom"]}] * 3
    (memes / "Confession-Bear.json").write_text(json.dumps(data))
    assert boxes_people_fill(memes / "Confession-Bear.json") == 2
    assert boxes_people_fill(memes / "Nothing-Here.json") is None
    bear = replace(catalog.get("confession-bear"), dataset_name="Confession-Bear")
    one, three = replace(bear, boxes=bear.boxes[:1]), replace(bear, boxes=bear.boxes[:1] * 3)
    assert check_box_counts([one], tmp_path) == ["confession-bear: 1 boxes, but people fill 2 on it"]
    assert check_box_counts([three], tmp_path) == []
