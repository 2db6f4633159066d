"""MemeService, the platform-neutral core: real catalog, renderer, SQLite and ModelPool;
only the caption model is scripted (fakes/caption_model.py)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from PIL import Image

from bot.errors import (
    AdminOnlyError,
    BadInputError,
    BadSettingError,
    BannedWordError,
    BoxCountError,
    BusyError,
    CooldownError,
    GenerationError,
    MemeError,
    MissingCaptionError,
    MissingTemplateError,
    NoModelError,
    NotAllowedError,
    NoTemplatesEnabledError,
    SettingsUsageError,
    TemplateNotEnabledError,
    UnknownMemeError,
    UnknownSettingError,
    UnknownTemplateError,
    error_text,
)
from bot.memes import ChatContext, MemeOptions
from bot.render import Renderer
from bot.service import MemeService
from bot.settings import ChatSettings
from bot.storage import Score, Storage
from common.catalog import load_catalog
from fakes.caption_model import FIXED_ENDING, ScriptedCaptions, config_for_tests, scripted_service
from model.pool import ModelPool

pytestmark = pytest.mark.timeout(60)

ALICE = ChatContext("test", chat_id="chat-1", user_id="alice")
BOB = ChatContext("test", chat_id="chat-1", user_id="bob")
ADMIN = ChatContext("test", chat_id="chat-1", user_id="carol", is_admin=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def model() -> ScriptedCaptions:
    return ScriptedCaptions()


@pytest.fixture
async def service(tmp_path: Path, model: ScriptedCaptions):
    # Generous limits: these tests are about memes, not flood control.
    async with scripted_service(config_for_tests(tmp_path, user_burst=100, chat_burst=100), model) as service:
        yield service


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def test_make_meme_continues_the_prefix_renders_and_stores_it(service: MemeService, model):
    made = await service.make_meme(ALICE, "change my mind", "pineapple on", MemeOptions(method="greedy"))

    assert made.template.slug == "change-my-mind"
    assert made.boxes == [f"pineapple on {FIXED_ENDING}"]
    assert made.score == Score(0, 0)
    image = decode(made.image.data)
    assert image.format.lower() == made.image.format and image.size == (made.image.width, made.image.height)
    # The model is asked with the template's dataset name and box count.
    assert model.last.template == "Change-My-Mind"
    assert model.last.n_boxes == len(made.template.boxes)
    stored = await service.storage.get_meme(made.id)
    assert (stored.template, stored.prefix, stored.boxes, stored.method) == (
        "change-my-mind",
        "pineapple on",
        made.boxes,
        "greedy",
    )
    assert stored.model_id == model.model_id


async def test_a_template_without_data_is_captioned_as_the_catalog_says(service: MemeService, model):
    """Distracted Boyfriend has no captions to learn from: the model writes as for Left Exit 12
    Off Ramp (obligation | temptation | me) and the meme shows its boxes in Distracted
    Boyfriend's order (temptation, me, obligation), in a meme, in the choices offered inline,
    and in 🔁. One Does Not Simply starts with its phrase. The user's own words are kept where
    they typed them, and nothing but what they typed is stored as their prefix."""
    greedy = MemeOptions(method="greedy")
    made = await service.make_meme(ALICE, "distracted-boyfriend", "", greedy)
    assert model.last.template == "Left-Exit-12-Off-Ramp" and model.last.n_boxes == 3
    assert made.boxes == ["box 2", "box 3", FIXED_ENDING]  # the model's box 3 ("me") on the boyfriend
    assert (await service.storage.get_meme(made.id)).prefix == ""
    rerolled = await service.reroll(ALICE, made.id)
    assert model.last.template == "Left-Exit-12-Off-Ramp" and rerolled.boxes[:2] == ["box 2", "box 3"]
    offered = await service.meme_candidates(ALICE, "distracted-boyfriend", "", n=2)
    assert offered and all(c.draft.boxes[:2] == ("box 2", "box 3") for c in offered)

    typed = await service.make_meme(ALICE, "distracted-boyfriend", "a new phone", greedy)
    assert model.last.template == "Distracted-Boyfriend"  # no other template's order for their words
    assert typed.boxes == [f"a new phone {FIXED_ENDING}", "box 2", "box 3"]

    simply = await service.make_meme(ALICE, "one-does-not-simply", "", greedy)
    assert model.last.prefix == "one does not simply|"
    assert simply.boxes == ["one does not simply", FIXED_ENDING]
    assert (await service.storage.get_meme(simply.id)).prefix == ""
    # Their words after the phrase, as typed; not twice when they typed it; not when they laid
    # out every box themselves.
    walk = await service.make_meme(ALICE, "one-does-not-simply", "Walk into 🌋", greedy)
    assert model.last.prefix == "one does not simply|Walk into 🌋"
    assert walk.boxes == ["one does not simply", f"Walk into 🌋 {FIXED_ENDING}"]
    assert (await service.storage.get_meme(walk.id)).prefix == "Walk into 🌋"
    own = await service.make_meme(ALICE, "one-does-not-simply", "One does not simply walk", greedy)
    assert own.boxes[0] == f"One does not simply walk {FIXED_ENDING}"
    laid_out = await service.make_meme(ALICE, "one-does-not-simply", "walk | into mordor", greedy)
    assert laid_out.boxes == ["walk", f"into mordor {FIXED_ENDING}"]
    fry = await service.make_meme(ALICE, "futurama-fry", "trolling", greedy)
    assert fry.boxes[0] == f"not sure if trolling {FIXED_ENDING}"

    kermit = await service.make_meme(ALICE, "but-thats-none-of-my-business", "I like tea", greedy)
    assert model.last.n_boxes == 1  # the model writes the first box; the phrase is the last
    assert kermit.boxes == [f"I like tea {FIXED_ENDING}", "but that's none of my business"]


async def test_no_template_picks_a_random_one_the_model_knows(service: MemeService):
    slugs = {(await service.make_meme(ALICE, None)).template.slug for _ in range(8)}
    known = {t.slug for t in service.catalog.templates if t.has_data}
    assert slugs <= known and len(slugs) > 1


async def test_random_pick_respects_the_chats_allowed_templates(service: MemeService):
    settings = await service.set_settings(ADMIN, {"templates": "drake, two buttons"})
    assert settings.allowed_templates == ("drake-hotline-bling", "two-buttons")
    picked = {(await service.make_meme(ALICE, "")).template.slug for _ in range(6)}
    assert picked <= {"drake-hotline-bling", "two-buttons"}
    with pytest.raises(NotAllowedError, match="isn't enabled"):
        await service.make_meme(ALICE, "change-my-mind")


async def test_unknown_template_gives_three_suggestions_and_stores_nothing(service: MemeService):
    with pytest.raises(UnknownTemplateError) as caught:
        await service.make_meme(ALICE, "drakkar")
    assert len(caught.value.suggestions) == 3
    assert "drake-hotline-bling" in [t.slug for t in caught.value.suggestions]
    assert "drake-hotline-bling" in caught.value.user_message
    assert await service.history(ALICE) == []


async def test_path_like_and_huge_template_names_are_refused_cleanly(service: MemeService):
    with pytest.raises(UnknownTemplateError):
        await service.make_meme(ALICE, "../../etc/passwd")
    with pytest.raises(BadInputError):
        await service.make_meme(ALICE, "x" * 10_000)


async def test_settings_resolve_options_over_chat_over_config(service: MemeService, model):
    config = service.config.generation
    await service.make_meme(ALICE, "drake")
    assert (model.last.method, model.last.temperature) == (config.method, config.temperature)

    await service.set_settings(ADMIN, {"temperature": "0.3", "method": "beam", "beam_width": "5"})
    await service.make_meme(ALICE, "drake")
    assert (model.last.method, model.last.temperature, model.last.beam_width) == ("beam", 0.3, 5)
    # Another chat keeps the defaults.
    await service.make_meme(ChatContext("test", "chat-2", "alice"), "drake")
    assert model.last.temperature == config.temperature

    await service.make_meme(ALICE, "drake", options=MemeOptions(method="greedy", temperature=1.5))
    assert (model.last.method, model.last.temperature) == ("greedy", 1.5)

    await service.set_settings(ADMIN, {"temperature": "default"})
    assert (await service.get_settings(ALICE)).temperature == config.temperature


async def test_settings_are_admin_only_and_bad_values_are_explained(service: MemeService):
    with pytest.raises(NotAllowedError):
        await service.set_settings(ALICE, {"temperature": "0.5"})
    for changes, message in [
        ({"temperature": "hot"}, "temperature must be a number from 0.1 to 2"),
        ({"temperature": "nan"}, "temperature must be a number"),
        ({"beam_width": "2.5"}, "beam_width must be a whole number from 1 to 16"),
        ({"method": "telepathy"}, "greedy, sample, beam"),
        ({"filter": "maybe"}, "on or off"),
        ({"colour": "red"}, 'no setting "colour"'),
        ({"temperature": ""}, "Give temperature a value"),
    ]:
        with pytest.raises(BadInputError, match=message):
            await service.set_settings(ADMIN, changes)
    with pytest.raises(UnknownTemplateError, match="drake"):
        await service.set_settings(ADMIN, {"templates": "drakkar"})
    assert (await service.get_settings(ALICE)).temperature == service.config.generation.temperature


async def test_settings_are_typed_values_that_reach_the_model_as_they_are(service: MemeService, model):
    settings = await service.set_settings(
        ADMIN, {"temp": "1.25", "beam-width": "7", "length": "80", "filter": "no", "cooldown": "2"}
    )
    assert isinstance(settings, ChatSettings)
    assert (settings.temperature, settings.beam_width, settings.max_length) == (1.25, 7, 80)
    assert (settings.filter_enabled, settings.cooldown_s) == (False, 2.0)
    assert isinstance(settings.cooldown_s, float) and isinstance(settings.beam_width, int)
    await service.make_meme(ALICE, "drake", options=MemeOptions(method="beam"))
    assert (model.last.temperature, model.last.beam_width, model.last.max_length) == (1.25, 7, 80)
    assert model.last.banned_words == ()
    # Every reset word, and "all" for the template list, goes back to the server's default.
    await service.set_settings(ADMIN, {"temperature": "reset", "beam": "unset", "templates": "drake"})
    settings = await service.set_settings(ADMIN, {"length": "DEFAULT", "templates": "all"})
    assert (settings.temperature, settings.beam_width, settings.max_length) == (
        service.config.generation.temperature,
        service.config.generation.beam_width,
        service.config.generation.max_length,
    )
    assert settings.allowed_templates is None


async def test_errors_carry_their_data_and_default_wording_names_no_platform(tmp_path: Path):
    """The service's own wording is platform-free; the data lets each front end say more."""
    async with scripted_service(config_for_tests(tmp_path, user_burst=100, chat_burst=100), None) as service:
        caught: list[MemeError] = []

        async def expect(kind: type[MemeError], call) -> MemeError:
            with pytest.raises(kind) as raised:
                await call
            caught.append(raised.value)
            return raised.value

        await expect(NoModelError, service.make_meme(ALICE, "drake"))
        await expect(MissingCaptionError, service.caption(ALICE, "drake", [" "]))
        await expect(MissingTemplateError, service.caption(ALICE, " ", ["text"]))
        boxes = await expect(BoxCountError, service.caption(ALICE, "drake", ["a", "b", "c"]))
        assert (boxes.template.slug, boxes.given) == ("drake-hotline-bling", 3)
        banned = await expect(BannedWordError, service.caption(ALICE, "drake", ["no", "fuck yes"]))
        assert (banned.what, banned.hidden) == ("That caption", "f***")
        await expect(AdminOnlyError, service.set_settings(ALICE, {"temperature": "0.5"}))
        await expect(SettingsUsageError, service.set_settings(ADMIN, {}))
        await expect(SettingsUsageError, service.set_settings(ADMIN, {" ": "1"}))
        assert (
            await expect(UnknownSettingError, service.set_settings(ADMIN, {"colour": "red"}))
        ).key == "colour"
        bad = await expect(BadSettingError, service.set_settings(ADMIN, {"best": "99"}))
        assert (bad.setting.name, bad.given) == ("best_of", "99")
        await service.set_settings(ADMIN, {"templates": "drake"})
        off = await expect(TemplateNotEnabledError, service.caption(ALICE, "two buttons", ["a", "b"]))
        assert off.template.slug == "two-buttons"
        # Nothing named is refused: an empty list would silently allow no template at all.
        await expect(BadSettingError, service.set_settings(ADMIN, {"templates": ","}))
    config = config_for_tests(tmp_path / "b", user_burst=100, chat_burst=100)
    async with scripted_service(config, ScriptedCaptions()) as service:
        await service.storage.set_settings("test", "chat-1", allowed_templates=[])
        await expect(NoTemplatesEnabledError, service.make_meme(ALICE, None))
    for error in caught:
        text = error.user_message
        assert text and not any(
            word in text for word in ("/caption", "/settings", "/memeconfig", "Manage Server", "group")
        ), text


def test_a_front_end_words_an_error_by_its_class_or_nearest_base():
    wording = {
        NotAllowedError: lambda e: "ask someone else",
        TemplateNotEnabledError: lambda e: f"no {e.template} here",
    }
    assert error_text(AdminOnlyError(), wording) == "ask someone else"  # its base's entry
    assert error_text(TemplateNotEnabledError(_Named("drake")), wording) == "no drake here"
    assert error_text(NoModelError(), wording) == NoModelError().user_message  # no entry: the default


class _Named(str):
    @property
    def name(self) -> str:
        return str(self)


async def test_user_options_follow_the_same_rules_as_settings(service: MemeService):
    with pytest.raises(BadInputError, match="temperature"):
        await service.make_meme(ALICE, "drake", options=MemeOptions(temperature=50))
    with pytest.raises(BadInputError, match="method"):
        await service.make_meme(ALICE, "drake", options=MemeOptions(method="magic"))


async def test_filter_setting_bans_the_configured_words(tmp_path: Path, model):
    config = config_for_tests(tmp_path)
    config.filter.extra_words = ["Pineapple"]
    async with scripted_service(config, model) as service:
        await service.make_meme(ALICE, "drake")
        banned = model.last.banned_words
        # The maintained list plus the configured words, leetspeak-aware, whole words only.
        assert "pineapple" in banned and "p1neapple" in banned and "fuck" in banned
        assert "pineapples" not in banned and "class" not in banned and "hell" not in banned
        await service.set_settings(ADMIN, {"filter": "off"})
        await service.make_meme(ALICE, "drake")
        assert model.last.banned_words == ()


async def test_rating_votes_withdraws_and_switches(service: MemeService):
    made = await service.make_meme(ALICE, "drake")
    assert await service.rate(ALICE, made.id, 1) == Score(1, 0)
    assert await service.rate(BOB, made.id, -1) == Score(1, 1)
    assert await service.rate(ALICE, made.id, 1) == Score(0, 1)  # the same press withdraws
    assert await service.rate(BOB, made.id, 1) == Score(1, 0)  # the other press switches
    with pytest.raises(UnknownMemeError):
        await service.rate(ALICE, 9999, 1)
    with pytest.raises(BadInputError):
        await service.rate(ALICE, made.id, 0)


async def test_reroll_samples_a_new_caption_for_the_same_template_and_prefix(service: MemeService, model):
    first = await service.make_meme(ALICE, "two-buttons", "tabs", MemeOptions(method="greedy"))
    again = await service.reroll(BOB, first.id)
    assert again.id != first.id
    assert again.template == first.template and again.prefix == "tabs"
    assert model.last.method == "sample" and again.boxes != first.boxes
    assert (await service.storage.get_meme(again.id)).user_hash != (
        await service.storage.get_meme(first.id)
    ).user_hash
    with pytest.raises(UnknownMemeError):
        await service.reroll(ALICE, 12345)


async def test_history_is_the_users_own_newest_first(service: MemeService):
    a = await service.make_meme(ALICE, "drake")
    await service.make_meme(BOB, "drake")
    b = await service.caption(ALICE, "two-buttons", ["tabs", "spaces"])
    assert [m.id for m in await service.history(ALICE)] == [b.id, a.id]
    assert len(await service.history(ALICE, n=1)) == 1


async def test_caption_needs_no_model_and_works_for_every_template(tmp_path: Path):
    async with scripted_service(
        config_for_tests(tmp_path, user_burst=1000, chat_burst=1000), None
    ) as service:
        assert not service.has_model
        with pytest.raises(NoModelError, match="your own text"):  # each front end names its /caption
            await service.make_meme(ALICE, "drake")
        ids = set()
        for template in service.catalog.templates:
            texts = [f"box {i}" for i in range(1, len(template.boxes) + 1)]
            made = await service.caption(ALICE, template.slug, texts)
            assert made.template == template and made.boxes == texts
            ids.add(made.id)
        assert len(ids) == len(service.catalog.templates) == 100


async def test_caption_draws_exactly_the_given_text(service: MemeService):
    made = await service.caption(ALICE, "drake", [" no thanks ", "yes please", ""])
    assert made.boxes == ["no thanks", "yes please"]
    expected = Renderer(service.config.template_images_dir).render(made.template, ["no thanks", "yes please"])
    assert made.image.data == expected.data
    blank = Renderer(service.config.template_images_dir).render(made.template, [])
    assert made.image.data != blank.data


async def test_caption_input_is_checked(service: MemeService):
    with pytest.raises(BadInputError, match="Give me some text"):
        await service.caption(ALICE, "drake", ["", "  "])
    with pytest.raises(BadInputError, match="too long"):
        await service.caption(ALICE, "drake", ["x" * 400, "y" * 400])
    with pytest.raises(BadInputError, match="Which template"):
        await service.caption(ALICE, "", ["text"])
    with pytest.raises(BadInputError, match="too long"):
        await service.make_meme(ALICE, "drake", "p" * 1000)


async def test_more_boxes_than_the_template_has_are_refused_with_its_count(service: MemeService, model):
    made = await service.caption(ALICE, "two buttons", ["fix the bug", "ship it anyway", "me, sweating"])
    assert made.boxes == ["fix the bug", "ship it anyway", "me, sweating"]  # one text per box
    with pytest.raises(BadInputError) as caught:
        await service.caption(ALICE, "two buttons", ["a", "b", "c", "d"])
    assert caught.value.user_message == (
        "Two Buttons has 3 text boxes, and you gave 4 (boxes are separated by |). "
        "Put that text into at most 3, or pick a template with more boxes."
    )
    with pytest.raises(BadInputError, match="Change My Mind has one text box, and you gave 2"):
        await service.make_meme(ALICE, "change my mind", "pineapple | on pizza")
    with pytest.raises(BadInputError, match="has 2 text boxes, and you gave 3"):
        await service.make_meme(ALICE, "drake", "a | b | c")
    assert [m.id for m in await service.history(ALICE)] == [made.id]  # nothing else was made
    # Starting the second box is fine; the model is told how many boxes there are.
    await service.make_meme(ALICE, "confession bear", "i never read the docs |")
    assert model.last.n_boxes == 2


async def test_the_start_of_a_caption_is_shown_as_typed_emoji_and_all(service: MemeService):
    # The model reads "pineapple on" (its alphabet has no emoji, no capitals, no Cyrillic) ...
    made = await service.make_meme(ALICE, "drake", "🔥 Pineapple on | Привет", MemeOptions(method="greedy"))
    # ... and the meme shows what was typed, with the model's words after it.
    assert made.boxes == ["🔥 Pineapple on", f"Привет {FIXED_ENDING}"]
    assert made.image.missing == () or service.renderer.fonts.undrawable("🔥Привет")


async def test_templates_search_is_typo_tolerant(service: MemeService):
    assert service.templates("chnage my mind")[0].slug == "change-my-mind"
    assert len(service.templates("", limit=1000)) == 100


@asynccontextmanager
async def limited_service(tmp_path: Path, clock: Clock, **limits: float) -> AsyncIterator[MemeService]:
    """A service with an injected clock, to test flood control without waiting."""
    config = config_for_tests(tmp_path, **limits)
    pool = ModelPool([ScriptedCaptions])
    await pool.start(warmup=False)
    storage = await Storage.open(config.database_path, config.storage.user_hash_key)
    try:
        yield MemeService(
            config=config,
            catalog=load_catalog(config.catalog_path),
            renderer=Renderer(config.template_images_dir),
            storage=storage,
            pool=pool,
            clock=clock,
        )
    finally:
        await storage.close()
        await pool.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_a_user_over_the_burst_gets_a_cooldown_until_tokens_refill(tmp_path: Path, clock: Clock):
    async with limited_service(tmp_path, clock, user_burst=2, user_rate_per_minute=6) as service:
        await service.make_meme(ALICE, "drake")
        await service.caption(ALICE, "drake", ["a", "b"])
        with pytest.raises(CooldownError) as caught:
            await service.make_meme(ALICE, "drake")
        assert caught.value.retry_after == pytest.approx(10.0)
        assert "10 s" in caught.value.user_message
        await service.make_meme(BOB, "drake")  # others are not affected
        clock.now += 10
        await service.make_meme(ALICE, "drake")


async def test_chat_cooldown_setting_spaces_one_persons_memes(tmp_path: Path, clock: Clock):
    async with limited_service(tmp_path, clock, user_burst=50, chat_burst=50) as service:
        await service.set_settings(ADMIN, {"cooldown": "30"})
        await service.make_meme(ALICE, "drake")
        clock.now += 5
        with pytest.raises(CooldownError, match="25 s"):
            await service.make_meme(ALICE, "drake")
        await service.make_meme(BOB, "drake")
        clock.now += 25
        await service.make_meme(ALICE, "drake")


async def test_chat_rate_setting_overrides_the_configured_chat_limit(tmp_path: Path, clock: Clock):
    async with limited_service(
        tmp_path, clock, user_burst=50, chat_burst=2, chat_rate_per_minute=60
    ) as service:
        await service.set_settings(ADMIN, {"rate": "6"})  # one meme every 10 s for the whole chat
        await service.make_meme(ALICE, "drake")
        await service.make_meme(BOB, "drake")
        with pytest.raises(CooldownError, match="10 s"):
            await service.make_meme(ALICE, "drake")
        clock.now += 5  # the config's 60/min would have refilled by now; the chat's 6/min has not
        with pytest.raises(CooldownError):
            await service.make_meme(BOB, "drake")
        clock.now += 5
        await service.make_meme(BOB, "drake")
        assert (await service.get_settings(ALICE)).chat_rate_per_minute == 6


async def test_unlimited_context_is_never_rate_limited(tmp_path: Path, clock: Clock):
    async with limited_service(tmp_path, clock, user_burst=1) as service:
        console = ChatContext("console", "console", "me", is_admin=True, rate_limited=False)
        for _ in range(4):
            await service.make_meme(console, "drake")


async def test_model_failure_is_friendly_and_does_not_use_up_the_users_turn(tmp_path: Path):
    model = ScriptedCaptions(fail=True)
    async with scripted_service(config_for_tests(tmp_path, user_burst=1), model) as service:
        for _ in range(3):  # a charged turn would make the second try a CooldownError
            with pytest.raises(GenerationError) as caught:
                await service.make_meme(ALICE, "drake")
            assert "try again" in caught.value.user_message.lower()


async def test_a_full_queue_is_a_busy_error(tmp_path: Path):
    model = ScriptedCaptions(delay_s=0.3)
    config = config_for_tests(tmp_path, user_burst=100, chat_burst=100)
    async with scripted_service(config, model, queue_size=1, max_batch=1) as service:
        users = [ChatContext("test", "chat-1", f"user{i}") for i in range(4)]
        results = await asyncio.gather(
            *(service.make_meme(u, "drake") for u in users), return_exceptions=True
        )
    busy = [r for r in results if isinstance(r, BusyError)]
    assert busy and "busy" in busy[0].user_message
    assert any(not isinstance(r, Exception) for r in results)


# --- the template picked from the text ---------------------------------------------------------------


def test_the_first_word_names_a_template_only_when_it_is_one(service: MemeService):
    assert service.split_template("drake no thanks | yes please") == ("drake", "no thanks | yes please")
    assert service.split_template("change-my-mind pineapple on") == ("change-my-mind", "pineapple on")
    assert service.split_template("chnage-my-mind pineapple") == ("chnage-my-mind", "pineapple")  # a typo
    # A caption's first word, even one that is a word of some template's name or alias:
    assert service.split_template("when the tests pass") == (None, "when the tests pass")
    assert service.split_template("me after coffee") == (None, "me after coffee")
    assert service.split_template("") == (None, "")


async def test_a_text_without_a_template_gets_one_the_model_picks(service: MemeService, model):
    # The scripted model scores a template by the text's words in its name: "mind" and "change"
    # make Change My Mind by far the likeliest, but the choice is among the best three.
    picked = await service.make_meme(ALICE, None, "change my mind about tabs", MemeOptions(method="greedy"))
    assert picked.found is not None and picked.found.how == "picked"
    assert picked.boxes[0].startswith("change my mind about tabs")  # the whole text is the caption's start
    (scoring,) = model.scorings
    ranked = sorted(
        scoring.templates,
        key=lambda n: -len({"change", "my", "mind", "about", "tabs"} & set(n.lower().split("-"))),
    )
    assert picked.template.dataset_name in ranked[:3]
    assert len(picked.found.alternatives) == 2 and picked.template not in picked.found.alternatives
    stored = await service.storage.get_meme(picked.id)
    assert stored.template == picked.template.slug and stored.prefix == "change my mind about tabs"


async def test_a_text_in_a_templates_set_phrase_gets_that_template(service: MemeService, model):
    """The model cannot pick the templates it has no captions of; their set phrase names them."""
    greedy = MemeOptions(method="greedy")
    simply = await service.make_meme(ALICE, None, "One does not simply walk into Mordor", greedy)
    assert simply.template.slug == "one-does-not-simply" and simply.found.how == "picked"
    assert simply.boxes[0].startswith("One does not simply walk into Mordor")  # as typed
    fry = await service.make_meme(ALICE, None, "not sure if trolling", greedy)
    assert fry.template.slug == "futurama-fry"
    kermit = await service.make_meme(ALICE, None, "i like tea but that\u2019s none of my business", greedy)
    assert kermit.template.slug == "but-thats-none-of-my-business"
    # Typed by them, the phrase is the last box as they typed it, their words before it.
    assert kermit.boxes == [f"i like tea {FIXED_ENDING}", "but that\u2019s none of my business"]
    assert model.scorings == []  # no model time spent on a pick the words decide
    # Not allowed in this chat: the model picks among the allowed ones as for any text.
    await service.set_settings(ADMIN, {"templates": "drake, change my mind"})
    made = await service.make_meme(ALICE, None, "one does not simply walk into mordor", greedy)
    assert made.template.slug in {"drake-hotline-bling", "change-my-mind"}
    # Only templates without captions allowed: one of them, not "no templates enabled".
    await service.set_settings(ADMIN, {"templates": "distracted boyfriend, expanding brain"})
    made = await service.make_meme(ALICE, None, "my code at 3am", greedy)
    assert made.template.slug in {"distracted-boyfriend", "expanding-brain"}


async def test_a_pick_only_chooses_templates_that_fit_and_are_allowed(service: MemeService, model):
    await service.set_settings(ADMIN, {"templates": "drake, two buttons, change my mind"})
    made = await service.make_meme(ALICE, None, "left | right | me", MemeOptions(method="greedy"))
    assert made.template.slug == "two-buttons"  # the only allowed one with three boxes
    assert set(model.scorings[-1].templates) == {"Two-Buttons"}
    with pytest.raises(BoxCountError):
        await service.make_meme(ALICE, None, " | ".join("abcdefghij"))  # no template has ten boxes
    assert len(model.scorings) == 1  # refused before the model was asked
