"""Safety: the content filter, input hardening, rate limits on rerolls, privacy of ids in
the database, and fuzzing of everything users type. Real service, SQLite and pool; the
caption model is scripted except where the real decoder is the point (tiny_checkpoint).
Rendering with arbitrary text is fuzzed in tests/test_render.py."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.errors import BadInputError, CooldownError, MemeError
from bot.graphemes import keeps_format_character
from bot.inputs import INVISIBLE, clean_text
from bot.memes import ChatContext
from bot.service import MemeService
from bot.settings import split_changes
from bot.telegram_app import parse_button, split_first_word
from common.catalog import UnknownTemplate, load_catalog
from common.config import FilterConfig
from common.content_filter import ContentFilter
from fakes.caption_model import ScriptedCaptions, config_for_tests, scripted_service
from model.requests import GenerationRequest

pytestmark = pytest.mark.timeout(60)

ALICE = ChatContext("test", chat_id="chat-1", user_id="alice")
ADMIN = ChatContext("test", chat_id="chat-1", user_id="carol", is_admin=True)


@pytest.fixture(scope="module")
def content_filter() -> ContentFilter:
    return ContentFilter.from_config(FilterConfig(extra_words=["pizza"]))


# --- the content filter ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "sh1t happens",
        "5HIT",
        "$hit",
        "a$$",
        "f.u.c.k you",
        "bull shit",
        "I love PIZZA",
        "kill yourself until you get the best friend zone",  # what the model wrote (two-buttons)
        "just KYS | lol",
        "go die",
    ],
)
def test_filter_catches_banned_words_in_their_disguises(content_filter: ContentFilter, text: str):
    assert content_filter.find(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "this class is a classic",
        "what the hell",
        "you stupid god",
        "an assessment",
        "Scunthorpe",
        "cocktail hour",
        "assassin's creed",
        "shitake mushrooms",
        "pizzas",
        "kill the lights",
        "skill yourself up",
        "i could die laughing",
    ],
)
def test_filter_matches_whole_words_and_spares_everyday_ones(content_filter: ContentFilter, text: str):
    assert content_filter.find(text) is None


def test_mask_hides_only_the_banned_word(content_filter: ContentFilter):
    assert content_filter.mask("sh1t, the class is over") == "****, the class is over"


@pytest.fixture
async def service(tmp_path: Path):
    model = ScriptedCaptions()
    async with scripted_service(config_for_tests(tmp_path, user_burst=100, chat_burst=100), model) as service:
        service.model = model  # type: ignore[attr-defined]
        yield service


async def test_a_users_own_banned_words_are_refused_with_a_clear_message(service: MemeService):
    with pytest.raises(BadInputError, match="has a word I don't write") as caught:
        await service.caption(ALICE, "drake", ["no thanks", "f\u200buck yes"])  # a zero-width space inside
    assert "fuck" not in caught.value.user_message  # the refusal does not repeat the word
    with pytest.raises(BadInputError, match="start of a caption"):
        await service.make_meme(ALICE, "drake", "sh1t")
    assert await service.history(ALICE) == []
    await service.set_settings(ADMIN, {"filter": "off"})  # the per-chat switch
    made = await service.caption(ALICE, "drake", ["no thanks", "fuck yes"])
    assert made.boxes == ["no thanks", "fuck yes"]


async def test_a_generated_banned_word_is_resampled_then_masked(tmp_path: Path):
    config = config_for_tests(tmp_path, user_burst=100, chat_burst=100)
    model = ScriptedCaptions(sample_endings=["what the fuck", "nice one", "oh shit", "holy shit"])
    async with scripted_service(config, model) as service:
        assert (await service.make_meme(ALICE, "change-my-mind", "me")).boxes == ["me nice one"]
        masked = await service.make_meme(ALICE, "change-my-mind", "me")
        assert masked.boxes == ["me holy ****"]
        assert (await service.storage.get_meme(masked.id)).boxes == ["me holy ****"]
        assert len(model.requests) == 4  # one resample each, no more


def test_the_real_decoder_never_completes_a_banned_word(tiny_checkpoint: Path, content_filter: ContentFilter):
    from model.generate import load_generator

    generator = load_generator(tiny_checkpoint)
    plain = GenerationRequest("Change-My-Mind", method="greedy", max_length=60)
    (free,) = generator.generate_batch([plain])
    assert "pizza" in free.captions[0].text  # the model learned "pineapple on pizza is a crime"
    banned = GenerationRequest(
        "Change-My-Mind", method="greedy", max_length=60, banned_words=content_filter.banned
    )
    beam = GenerationRequest(
        "Change-My-Mind", method="beam", max_length=60, banned_words=content_filter.banned
    )
    for result in generator.generate_batch([banned, beam]):
        assert content_filter.find(result.captions[0].text) is None, result.captions[0].text


# --- input hardening ---------------------------------------------------------------------------


def test_clean_text_folds_lookalikes_and_drops_invisible_characters():
    assert clean_text("ｄｒａｋｅ") == "drake"
    assert clean_text("no\u200b\u200dthanks\u202e\x00 |\tyes\n\nplease\ufeff") == "nothanks | yes please"


async def test_overlong_text_is_refused_with_the_limit(service: MemeService):
    limit = service.config.limits.max_prefix_chars
    with pytest.raises(BadInputError, match=f"under {limit} characters"):
        await service.make_meme(ALICE, "drake", "a" * (limit + 1))
    # Invisible padding does not count against the user, nor does it reach the model.
    await service.make_meme(ALICE, "drake", "a\u200b" * limit)
    assert service.model.last.prefix == "a" * limit  # type: ignore[attr-defined]


async def test_forged_meme_ids_are_unknown_memes_not_crashes(service: MemeService):
    for meme_id in (0, -5, 2**64, 10**30):
        with pytest.raises(MemeError):
            await service.rate(ALICE, meme_id, 1)
        with pytest.raises(MemeError):
            await service.reroll(ALICE, meme_id)


@given(st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_template_names_never_reach_the_file_system(query: str):
    assert_only_catalog_images(query)


@pytest.mark.parametrize("query", ["../../etc/passwd", "..", "/etc/passwd", "drake/../../x", "C:\\windows"])
def test_path_traversal_names_are_unknown_or_a_catalog_template(query: str):
    assert_only_catalog_images(query)


def assert_only_catalog_images(query: str) -> None:
    """A name either is unknown or picks a catalog template, whose image is a plain file in
    the images folder: what a user types never becomes part of a path."""
    catalog = _catalog()
    images = Path("/srv/templates")
    try:
        template = catalog.lookup(query)
    except UnknownTemplate:
        return
    assert template in catalog.templates
    path = catalog.image_path(template, images)
    assert path.parent == images and ".." not in path.parts


_CATALOG = []


def _catalog():
    if not _CATALOG:
        from common.config import Config

        _CATALOG.append(load_catalog(Config().catalog_path))
    return _CATALOG[0]


# --- rate limits ---------------------------------------------------------------------------------


async def test_rerolls_count_against_the_limit_and_the_reply_says_when(tmp_path: Path):
    config = config_for_tests(tmp_path, user_burst=2, user_rate_per_minute=6)
    async with scripted_service(config, ScriptedCaptions()) as service:
        made = await service.make_meme(ALICE, "drake")
        await service.reroll(ALICE, made.id)
        with pytest.raises(CooldownError, match=r"in (9|10) s"):
            await service.reroll(ALICE, made.id)


async def test_a_busy_chat_is_told_it_is_the_chat(tmp_path: Path):
    config = config_for_tests(tmp_path, user_burst=5, chat_burst=2, chat_rate_per_minute=6)
    async with scripted_service(config, ScriptedCaptions()) as service:
        await service.make_meme(ALICE, "drake")
        await service.make_meme(ChatContext("test", "chat-1", "bob"), "drake")
        with pytest.raises(CooldownError, match="This chat is making memes"):
            await service.make_meme(ChatContext("test", "chat-1", "dave"), "drake")


# --- fuzzing what users type ---------------------------------------------------------------------


@given(st.text())
# Found by this test: the unassigned U+18CD6 kept two combining marks apart until it was dropped.
@example("\u00b4\U00018cd6\U00011d42")
def test_clean_text_is_idempotent_and_leaves_nothing_invisible(text: str):
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned
    assert (
        unicodedata.normalize("NFKC", cleaned) == cleaned
        or clean_text(unicodedata.normalize("NFKC", cleaned)) == cleaned
    )
    assert not any(
        unicodedata.category(ch) in INVISIBLE and not keeps_format_character(cleaned, i)
        for i, ch in enumerate(cleaned)
    )
    assert cleaned == cleaned.strip() and "  " not in cleaned


def test_the_joiners_inside_an_emoji_stay_and_hide_no_word():
    for emoji in (
        "👩\u200d💻",
        "❤️\u200d🔥",
        "🧑🏽\u200d🚒",
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    ):
        assert clean_text(f"me {emoji} ok") == f"me {emoji} ok"
    assert clean_text("p\u200di\u200dzza 😀\u200dx") == "pizza 😀x"


@given(st.text())
def test_command_parsing_never_fails_unexpectedly(text: str):
    first, rest = split_first_word(text)
    assert " " not in first and rest == rest.strip()
    changes = split_changes(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in changes.items())
    try:
        action, meme_id, vote = parse_button(text)
    except ValueError:
        return
    assert action in ("vote", "reroll") and vote in (-1, 0, 1) and isinstance(meme_id, int)


@given(
    prefix=st.text(max_size=80), template=st.sampled_from(["Change-My-Mind", "Drake-Hotline-Bling", "Nope"])
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_decoding_any_prefix_works_and_stays_clean(
    tiny_checkpoint: Path, content_filter: ContentFilter, prefix: str, template: str
):
    generator = _generator(tiny_checkpoint)
    request = GenerationRequest(
        template, prefix=clean_text(prefix), max_length=15, banned_words=content_filter.banned, n_boxes=2
    )
    (result,) = generator.generate_batch([request])
    (caption,) = result.captions
    assert len(caption.boxes) == 2
    # The decoder only guards what it writes: words the fuzzer typed may stay (the service refuses those).
    written = caption.text.lower()
    for word in content_filter.banned:
        assert f" {word} " not in f" {written} " or word in clean_text(prefix).lower()


_GENERATORS: dict[Path, object] = {}


def _generator(checkpoint: Path):
    from model.generate import load_generator

    if checkpoint not in _GENERATORS:
        _GENERATORS[checkpoint] = load_generator(checkpoint)
    return _GENERATORS[checkpoint]


# --- secrets ------------------------------------------------------------------------------------


def test_log_lines_and_tracebacks_have_the_token_redacted():
    import io
    import logging

    from bot.redact import REDACTED, redact_logs

    token = "123456:SECRET-TOKEN-abc"
    stream = io.StringIO()
    logger = logging.getLogger("test_safety.redact")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        redact_logs([token], logger)
        logger.warning("HTTP Request: POST %s", f"https://api.telegram.org/bot{token}/getMe")
        try:
            raise RuntimeError(f"cannot reach /bot{token}/sendPhoto")
        except RuntimeError:
            logger.exception("sending failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "SECRET-TOKEN-abc" not in output and output.count(REDACTED) == 2
    assert "RuntimeError" in output  # the traceback is still there, only without the secret
