"""Telegram's inline mode end to end: the real python-telegram-bot against the fake Bot API.

A user types `@memebot drake no thanks | yes please` (`send_inline_query`), the bot answers with
cached photos it uploaded to the cache chat, the user sends one (`choose_inline_result`), and
presses its buttons (`press_inline`). The fake holds the bot to Telegram's rules: at most 50
results, result ids and callback data of 1-64 bytes, one answer per query and only while the query
is fresh, no uploads into inline messages, and only the update kinds the bot asked for.
Every test here has "inline" in its name: `pytest -k inline` runs them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from telegram import Bot, InlineQueryResultArticle, InlineQueryResultCachedPhoto, InputMediaPhoto
from telegram import InputTextMessageContent as Text
from telegram.error import BadRequest

from bot.errors import BannedWordError, CooldownError
from bot.memes import ChatContext
from bot.service import MemeService
from bot.storage import Score
from bot.telegram_app import SendRetry, TelegramFrontEnd, Timeouts
from bot.telegram_inline import BUSY, GONE, HINT, NOT_SET_UP, NOT_YOURS, UNAVAILABLE, InlineTiming
from common.config import Config
from fakes.caption_model import ScriptedCaptions, config_for_tests, scripted_service
from fakes.telegram_server import FakeTelegramServer, InlineQuery

pytestmark = pytest.mark.timeout(60)

ALICE, BOB = 501, 502
CACHE_CHAT = -100999  # the operator's private channel the candidates are uploaded to
FAST_TIMEOUTS = Timeouts(connect_s=2.0, read_s=1.0, write_s=2.0, media_write_s=2.0, pool_s=1.0)
FAST_RETRY = SendRetry(attempts=3, backoff_s=0.05)
TIMING = InlineTiming(debounce_s=0.3)


@dataclass
class Inline:
    server: FakeTelegramServer
    config: Config
    model: ScriptedCaptions
    service: MemeService
    bot: TelegramFrontEnd


@asynccontextmanager
async def inline_bot(
    tmp_path: Path,
    *,
    cache_chat: int = CACHE_CHAT,
    model: ScriptedCaptions | None = None,
    no_model: bool = False,
    timing: InlineTiming = TIMING,
    **limits: float,
) -> AsyncIterator[Inline]:
    config = config_for_tests(tmp_path, **({"user_burst": 100, "chat_burst": 100} | limits))
    model = model or ScriptedCaptions(best_of=True)
    async with (
        FakeTelegramServer() as server,
        scripted_service(config, None if no_model else model) as service,
    ):
        telegram = dataclasses.replace(server.bot_config(), inline_cache_chat=cache_chat)
        bot = TelegramFrontEnd(service, telegram, timeouts=FAST_TIMEOUTS, retry=FAST_RETRY, inline=timing)
        await bot.start()
        try:
            yield Inline(server, config, model, service, bot)
        finally:
            await bot.close()


@pytest.fixture
async def inline(tmp_path: Path) -> AsyncIterator[Inline]:
    async with inline_bot(tmp_path) as running:
        yield running


async def ask(server: FakeTelegramServer, text: str, user_id: int = ALICE) -> InlineQuery:
    """A user types `@bot text` and waits for the answer."""
    return await server.wait_inline_answer(server.send_inline_query(text, user_id=user_id))


def alice() -> ChatContext:
    return ChatContext("telegram", str(ALICE), str(ALICE), is_private=True)


def keyboard_data(server: FakeTelegramServer, inline_message_id: str) -> list[str]:
    rows = server.inline_messages[inline_message_id]["reply_markup"]["inline_keyboard"]
    return [button["callback_data"] for row in rows for button in row]


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def sent_and_stored(running: Inline, query: InlineQuery, place: int) -> tuple[str, int]:
    """The user sends result `place` of an answer; its inline_message_id and, once the bot has
    stored it and put its id on the buttons, the meme id."""
    server = running.server
    inline_message_id = server.choose_inline_result(query.id, query.results[place]["id"])
    assert inline_message_id is not None

    def stored() -> bool:
        return keyboard_data(server, inline_message_id)[0].startswith("v:")

    await until(stored)
    return inline_message_id, int(keyboard_data(server, inline_message_id)[0].split(":")[1])


async def test_inline_template_and_words_show_the_words_then_model_candidates_as_cached_photos(
    inline: Inline,
):
    server = inline.server
    typed = time.monotonic()
    query = await ask(server, "drake no thanks | yes please")
    # A debounce and a scripted model: about half a second; the margin is for a busy machine.
    assert time.monotonic() - typed < 2.0

    results = query.results
    assert len(results) == 5
    assert [r["type"] for r in results] == ["photo"] * 5
    assert all(r["title"] == "Drake Hotline Bling" for r in results)
    # The user's own words first (no model), then the model's completions of them.
    assert results[0]["description"] == "no thanks | yes please"
    assert all(r["description"].startswith("no thanks | yes please take ") for r in results[1:])
    # Every photo was uploaded to the cache chat in one album; the answer lists their file_ids.
    (album,) = server.sent("sendMediaGroup", CACHE_CHAT)
    uploaded = [m["photo"][-1]["file_id"] for m in album_messages(server, album)]
    assert [r["photo_file_id"] for r in results] == uploaded
    assert album.params.get("disable_notification") in (True, "true", "True")
    # Personal, briefly cached by Telegram; buttons on every result.
    assert query.answer.params["is_personal"] in (True, "true", "True")
    assert int(query.answer.params["cache_time"]) == TIMING.telegram_cache_s
    assert all(
        [b["text"] for b in r["reply_markup"]["inline_keyboard"][0]] == ["👍 0", "👎 0", "🔁"]
        for r in results
    )
    # Only what is sent is stored: nothing yet.
    assert await inline.service.history(alice()) == []
    # One model request for all four captions (best of N), charged as one meme.
    assert len(inline.model.requests) == 1 and inline.model.last.method == "sample"


def album_messages(server: FakeTelegramServer, call) -> list[dict]:
    return [server.messages[(call.chat_id, m)] for m in call.params["_message_ids"]]


async def test_inline_sent_result_is_stored_and_its_buttons_vote_on_the_inline_message(inline: Inline):
    server, storage = inline.server, inline.service.storage
    query = await ask(server, "drake no thanks | yes please")
    assert {"inline_query", "chosen_inline_result"} <= set(server.allowed_updates)
    inline_message_id, meme = await sent_and_stored(inline, query, 1)

    stored = await storage.get_meme(meme)
    assert (stored.template, stored.prefix, stored.method) == (
        "drake-hotline-bling",
        "no thanks | yes please",
        "sample",
    )
    assert " | ".join(stored.boxes) == query.results[1]["description"]
    assert stored.message_id == f"inline:{inline_message_id}"
    assert stored.media_ref == query.results[1]["photo_file_id"]  # /top can show it again
    assert [m.id for m in await inline.service.history(alice())] == [meme]
    assert keyboard_data(server, inline_message_id) == [f"v:{meme}:1", f"v:{meme}:-1", f"r:{meme}"]

    # Bob, in that chat, votes: the callback has the inline_message_id and no message.
    press = server.press_inline(inline_message_id, f"v:{meme}:1", user_id=BOB)
    (answer,) = await server.wait_answer(server.query_key(press))
    assert answer.params["text"] == "👍 1 · 👎 0"
    await until(lambda: server.inline_buttons(server.inline_messages[inline_message_id])[0] == "👍 1")
    assert await storage.score(meme) == Score(1, 0)
    edits = server.sent("editMessageReplyMarkup")
    assert all(
        e.params["inline_message_id"] == inline_message_id and "chat_id" not in e.params for e in edits
    )


async def test_inline_sent_without_feedback_is_stored_once_at_the_first_press(inline: Inline):
    server, storage = inline.server, inline.service.storage
    server.inline_feedback = False  # BotFather's /setinlinefeedback left off: no chosen_inline_result
    query = await ask(server, "drake no thanks | yes please")
    result = query.results[0]
    inline_message_id = server.choose_inline_result(query.id, result["id"])
    pending = keyboard_data(server, inline_message_id)
    assert pending == [f"iv:{result['id']}:1", f"iv:{result['id']}:-1", f"ir:{result['id']}"]

    # Two people press at once: the meme is stored once, as Alice's (she sent it), with both votes.
    first = server.press_inline(inline_message_id, pending[0], user_id=BOB)
    second = server.press_inline(inline_message_id, pending[1], user_id=ALICE)
    await server.wait_answer(server.query_key(first))
    await server.wait_answer(server.query_key(second))
    (meme,) = await inline.service.history(alice())
    assert (meme.method, meme.boxes) == ("caption", ["no thanks", "yes please"])
    assert await storage.score(meme.id) == Score(1, 1)
    await until(lambda: keyboard_data(server, inline_message_id)[0] == f"v:{meme.id}:1")
    assert server.inline_buttons(server.inline_messages[inline_message_id])[:2] == ["👍 1", "👎 1"]
    assert (await storage.stats()).memes == 1
    # Feedback switched on late: the report of the send changes nothing (no second meme, no reset).
    server.push_update(
        {
            "chosen_inline_result": {
                "result_id": result["id"],
                "from": server.user(ALICE),
                "query": query.query,
                "inline_message_id": inline_message_id,
            }
        }
    )
    await asyncio.sleep(0.5)
    assert server.inline_buttons(server.inline_messages[inline_message_id])[:2] == ["👍 1", "👎 1"]
    assert (await storage.stats()).memes == 1


async def test_inline_typing_as_you_go_answers_the_last_query_only_and_caches_it(inline: Inline):
    server = inline.server
    # One query per keystroke, faster than the debounce: only the last is worth an answer.
    typed = [server.send_inline_query(text) for text in ("d", "dr", "dra", "drak", "drake", "drake no")]
    last = await server.wait_inline_answer(typed[-1])
    assert len(last.results) == 5
    await asyncio.sleep(TIMING.debounce_s * 2)
    assert [server.inline_queries[q].answer for q in typed[:-1]] == [None] * 5  # Telegram drops them
    assert len(inline.model.requests) == 1 and inline.model.last.prefix == "no"
    uploads = len(server.sent("sendMediaGroup"))

    # Back to the same text (a new query id): the same results at once, no model, no upload.
    again = await ask(server, "drake  no")
    assert [r["id"] for r in again.results] == [r["id"] for r in last.results]
    assert len(inline.model.requests) == 1 and len(server.sent("sendMediaGroup")) == uploads
    # Another user typing the same gets their own (answers are personal).
    bobs = await ask(server, "drake no", user_id=BOB)
    assert {r["id"] for r in bobs.results}.isdisjoint(r["id"] for r in last.results)


async def test_inline_work_for_a_superseded_query_is_cancelled_and_not_charged(tmp_path: Path):
    model = ScriptedCaptions(best_of=True, delay_s=1.0)
    # One meme's worth of rate limit: the cancelled query must give its turn back.
    async with inline_bot(tmp_path, model=model, user_burst=1) as running:
        server = running.server
        first = server.send_inline_query("drake slow one")
        # Its turn is charged (the model is on it) when the user types on.
        await until(lambda: running.service._user_limit.wait_time(f"telegram:{ALICE}") > 0)
        second = await ask(server, "drake slow two")
        assert len(second.results) == 5
        assert "slow two" in second.results[1]["description"]
        await asyncio.sleep(0.3)
        assert server.inline_queries[first].answer is None
        assert running.service.pool.stats.cancelled >= 1  # type: ignore[union-attr]


async def test_inline_answer_deadline_answers_busy_once(tmp_path: Path):
    model = ScriptedCaptions(best_of=True, delay_s=2.5)
    timing = InlineTiming(debounce_s=0.1, answer_within_s=1.0)
    async with inline_bot(tmp_path, model=model, timing=timing) as running:
        server = running.server
        server.inline_answer_deadline_s = 1.5  # a stricter Telegram: a late answer is refused
        query_id = server.send_inline_query("drake too slow")
        query = await server.wait_inline_answer(query_id, timeout=3)
        assert query.results == [] and query.button["text"] == BUSY
        assert int(query.answer.params["cache_time"]) == 0  # not to be shown again
        await asyncio.sleep(2.0)  # the model finishes meanwhile: nothing more is sent
        assert len(server.answers[server.inline_key(query_id)]) == 1
        model.delay_s = 0
        assert len((await ask(server, "drake quick")).results) == 5


async def test_inline_rate_limits_apply_and_say_when_to_try_again(tmp_path: Path):
    async with inline_bot(tmp_path, user_burst=1) as running:
        server = running.server
        assert len((await ask(server, "drake first")).results) == 5
        refused = await ask(server, "drake second")
        assert refused.results == [] and refused.button["text"].startswith("Slow down")
        assert int(refused.answer.params["cache_time"]) == 0
        assert len((await ask(server, "drake first")).results) == 5  # cached: costs nothing


async def test_inline_without_a_cache_chat_explains_instead_of_crashing(tmp_path: Path):
    async with inline_bot(tmp_path, cache_chat=0) as running:
        server = running.server
        for text in ("drake no thanks", ""):
            query = await ask(server, text)
            assert query.results == []
            assert query.button == {"text": NOT_SET_UP, "start_parameter": "inline"}
        assert server.sent("sendMediaGroup") == [] and server.sent("sendPhoto") == []
        # The button opens a private chat with /start inline: the help, which explains inline mode.
        server.send_text("/start inline", chat_id=ALICE, user_id=ALICE)
        (help_text,) = await server.wait_for("sendMessage")
        assert "In any chat, type my @username" in help_text.params["text"]


async def test_inline_empty_query_shows_popular_templates_and_how_to_type_one(inline: Inline):
    server = inline.server
    query = await ask(server, "")
    assert query.button == {"text": HINT, "start_parameter": "inline"}
    titles = [r["title"] for r in query.results]
    popular = [t for t in inline.service.catalog.templates if t.has_data][:10]
    assert titles == [t.name for t in popular]
    assert all("reply_markup" not in r for r in query.results)  # a blank template: nothing to vote on
    assert inline.model.requests == []  # no model time for browsing
    uploads = len(server.sent("sendMediaGroup"))
    again = await ask(server, "   ", user_id=BOB)  # blanks are uploaded once, for everyone
    assert [r["photo_file_id"] for r in again.results] == [r["photo_file_id"] for r in query.results]
    assert len(server.sent("sendMediaGroup")) == uploads
    # Sending one shares the blank picture; nothing is stored.
    assert server.choose_inline_result(query.id, query.results[0]["id"]) is None
    await asyncio.sleep(0.2)
    assert (await inline.service.storage.stats()).memes == 0


async def test_inline_words_without_a_template_get_the_models_picks(inline: Inline):
    server, service = inline.server, inline.service
    text = "choosing between two buttons is hard"
    assert service.split_template(text) == (None, text)
    query = await ask(server, text)
    titles = [r["title"] for r in query.results]
    assert len(titles) == 5
    # The scripted model scores by shared words: Two Buttons is among the best three, the one
    # drawn first (as /meme would), then the alternatives, their captions taken in turn.
    assert "Two Buttons" in titles[:3] and len(set(titles[:3])) == 3
    assert titles[3:] == titles[:2]
    assert all(r["description"].startswith("choosing between two buttons is hard") for r in query.results)
    assert len(inline.model.scorings) == 1  # one pick for the text
    assert len(inline.model.requests) == 3  # a request per template, decoded together


async def test_inline_reroll_swaps_the_picture_for_its_author_and_tells_others_why_not(inline: Inline):
    server, storage = inline.server, inline.service.storage
    query = await ask(server, "drake")
    inline_message_id, meme = await sent_and_stored(inline, query, 0)
    requests = len(inline.model.requests)

    refused = server.press_inline(inline_message_id, f"r:{meme}", user_id=BOB)
    (note,) = await server.wait_answer(server.query_key(refused))
    assert note.params["text"] == NOT_YOURS and note.params["show_alert"] in (True, "true", "True")

    server.press_inline(inline_message_id, f"r:{meme}", user_id=ALICE)
    (swap,) = await server.wait_for("editMessageMedia")
    assert swap.params["inline_message_id"] == inline_message_id
    assert swap.files == {}  # an inline message takes a file_id, never an upload
    file_id = swap.params["media"]["media"]
    assert file_id in server.files and file_id != query.results[0]["photo_file_id"]
    new = int(swap.keyboard[0][0]["callback_data"].split(":")[1])
    assert new != meme and server.inline_messages[inline_message_id]["photo"] == file_id

    async def attached() -> bool:
        return (await storage.get_meme(new)).message_id == f"inline:{inline_message_id}"

    await until(attached)
    stored = await storage.get_meme(new)
    assert stored.template == "drake-hotline-bling" and stored.media_ref == file_id
    # Served from the request's other candidates (kept with the sent one): no new model time.
    assert len(inline.model.requests) == requests
    assert " | ".join(stored.boxes) in [r["description"] for r in query.results[1:]]

    # Forgetting the meme it replaced leaves the message (showing the new one) and its buttons be.
    server.send_text(f"/forget {meme}", chat_id=ALICE, user_id=ALICE)
    (reply,) = await server.wait_for("sendMessage")
    assert f"meme #{meme} is gone" in reply.params["text"] and "sent inline" not in reply.params["text"]
    assert keyboard_data(server, inline_message_id)[0] == f"v:{new}:1"


async def test_inline_presses_on_unknown_candidates_and_bad_input_are_answered_in_words(inline: Inline):
    server = inline.server
    for text in ("drake a | b | c | d", "|||", "drake " + "x" * 300, "\u200b\u202e drake 🔥", "@#$%^&*"):
        query = await ask(server, text)
        assert query.results or query.button, text
    too_many = await ask(server, "drake one | two | three")
    assert too_many.results == [] and "box" in too_many.button["text"].lower()

    # A candidate from before a restart: its pending buttons say so instead of failing.
    query = await ask(server, "drake lost")
    inline_message_id = server.choose_inline_result(query.id, query.results[0]["id"])
    inline.bot.inline._shown = type(inline.bot.inline._shown)(1, 1, time.monotonic)  # memory gone
    press = server.press_inline(inline_message_id, f"iv:{query.results[0]['id']}:1", user_id=BOB)
    (answer,) = await server.wait_answer(server.query_key(press))
    assert answer.params["text"] == GONE


async def test_inline_cache_chat_refusing_uploads_is_answered_and_recovers(inline: Inline):
    server = inline.server
    server.fail_next("sendMediaGroup", status=400)  # e.g. the bot was removed from the channel
    broken = await ask(server, "drake broken")
    assert broken.results == [] and broken.button["text"] == UNAVAILABLE
    assert len((await ask(server, "drake fixed")).results) == 5


async def test_inline_without_a_model_offers_the_users_own_words(tmp_path: Path):
    async with inline_bot(tmp_path, no_model=True) as running:
        server = running.server
        own = await ask(server, "drake no thanks | yes please")
        assert [r["description"] for r in own.results] == ["no thanks | yes please"]
        alone = await ask(server, "drake")
        assert alone.results == [] and "your own words" in alone.button["text"]


async def test_inline_forgotten_meme_loses_its_buttons_and_the_reply_says_why(inline: Inline):
    server = inline.server
    query = await ask(server, "drake no thanks | yes please")
    inline_message_id, meme = await sent_and_stored(inline, query, 0)
    server.send_text(f"/forget {meme}", chat_id=ALICE, user_id=ALICE)
    (reply,) = await server.wait_for("sendMessage")
    assert f"meme #{meme} is gone" in reply.params["text"] and "sent inline" in reply.params["text"]
    await until(lambda: not server.inline_messages[inline_message_id].get("reply_markup"))
    assert await inline.service.history(alice()) == []


async def test_inline_fake_enforces_telegrams_rules(inline: Inline):
    """The rules the real server enforces, checked against the real library (not our bot)."""
    server = inline.server
    photo = server.add_file(b"a picture")
    async with Bot(server.token, base_url=server.base_url) as bot:

        def results(n: int, id_length: int = 8) -> list[InlineQueryResultCachedPhoto]:
            return [InlineQueryResultCachedPhoto(f"{i:0{id_length}d}", photo) for i in range(n)]

        query = server.send_inline_query("whatever", user_id=BOB)
        with pytest.raises(BadRequest, match="(?i)RESULTS_TOO_MUCH"):
            await bot.answer_inline_query(query, results(51))
        with pytest.raises(BadRequest, match="(?i)RESULT_ID_INVALID"):
            await bot.answer_inline_query(query, results(1, id_length=65))
        with pytest.raises(BadRequest, match="(?i)RESULT_ID_DUPLICATE"):
            await bot.answer_inline_query(query, results(1) + results(1))
        with pytest.raises(BadRequest, match="(?i)wrong file identifier"):
            await bot.answer_inline_query(query, [InlineQueryResultCachedPhoto("x", "no-such-file")])
        assert await bot.answer_inline_query(query, results(50), cache_time=0)  # 50 is fine
        with pytest.raises(BadRequest, match="(?i)query is too old"):
            await bot.answer_inline_query(query, results(1))  # answered once only

        article = InlineQueryResultArticle("a", "An article", Text("hello"))
        server.inline_answer_deadline_s = 0.1
        late = server.send_inline_query("late", user_id=BOB)
        await asyncio.sleep(0.2)
        with pytest.raises(BadRequest, match="(?i)query is too old"):
            await bot.answer_inline_query(late, [article])

        server.inline_messages["im-test"] = {"photo": photo, "reply_markup": None}
        with pytest.raises(BadRequest, match="(?i)can't upload"):
            await bot.edit_message_media(InputMediaPhoto(b"new bytes"), inline_message_id="im-test")
        assert await bot.edit_message_media(InputMediaPhoto(photo), inline_message_id="im-test")


# --- the service's side of it, without Telegram ----------------------------------------------------


async def test_inline_candidates_service_shares_best_of_keeps_one_turn_and_stores_on_keep(tmp_path: Path):
    model = ScriptedCaptions(best_of=True)
    config = config_for_tests(tmp_path, user_burst=2)
    async with scripted_service(config, model) as service:
        ctx = alice()
        # Words with no template: three picked templates, the chat's best of 8 shared among them.
        picked = await service.meme_candidates(ctx, None, "two buttons to press", 5)
        assert [r.best_of for r in model.requests] == [3, 3, 3]
        assert len({c.draft.template.slug for c in picked}) == 3 and len(picked) == 5
        assert all(c.draft.found is not None and c.draft.found.how == "picked" for c in picked)
        assert all(c.image.data and c.image.width > 100 for c in picked)
        # A named template with words: the words as written, then completions, all different.
        named = await service.meme_candidates(ctx, "drake", "no | yes", 5)
        assert named[0].draft.boxes == ("no", "yes") and named[0].draft.method == "caption"
        assert len({c.draft.boxes for c in named}) == 5
        # Two calls, two turns: the third is refused like a third meme would be.
        with pytest.raises(CooldownError):
            await service.meme_candidates(ctx, "drake", "", 5)
        with pytest.raises(BannedWordError):
            await service.meme_candidates(ctx, "drake", "fuck | yes", 5)
        # Keeping one stores it like any meme, with its siblings for 🔁, and costs no turn.
        kept = named[2].draft
        meme = await service.keep(ctx, kept, "inline:abc", "file-1")
        stored = await service.storage.get_meme(meme)
        assert (stored.boxes, stored.message_id, stored.media_ref) == (
            list(kept.boxes),
            "inline:abc",
            "file-1",
        )
        assert list(kept.boxes) not in stored.params["candidates"] and len(stored.params["candidates"]) == 7
        assert await service.made_by(ctx, meme)
        assert not await service.made_by(ChatContext("telegram", "9", "9", is_private=True), meme)
