"""Telegram's inline mode: `@memebot drake no thanks | yes please` typed in any chat.

The user sees up to five rendered memes above their keyboard and sends the one they like; it
arrives with 👍 👎 🔁 under it, and is stored like any meme once it is sent.

**Cached photos.** An inline answer can only show a photo Telegram can fetch: a public URL, or
a file it already has. So every candidate is uploaded first, to the chat `[telegram]
inline_cache_chat` names (a private channel, say), and the answer lists them by `file_id`. The
other way, answering with a placeholder and putting the meme in on `chosen_inline_result` with
`editMessageMedia`, would need the same upload (an inline message cannot be edited to a new
upload, only to a `file_id` or a URL), would show no preview of the meme while choosing, and
would depend on inline feedback being switched on.

**Typing as you go.** Telegram sends a query per keystroke. A user's query waits `debounce_s`
and is dropped when a newer one of theirs comes in meanwhile; work under way for an older one
is cancelled (and its rate-limit turn given back, see `MemeService._turn`). Answers are kept per
(user, query) for `cache_s`, so going back to a query is instant, and told to Telegram as
personal with a short `cache_time`. Everything is answered within `answer_within_s`, before
Telegram forgets the query (about 10 s); anything slower is answered "busy", once.

**What is stored.** The candidates are drafts (`MemeDraft`) held in memory for `keep_drafts_s`;
the one sent is stored when Telegram reports it (`chosen_inline_result`, with inline feedback
on) or, failing that, at the first press of its buttons. Then its buttons carry the meme id like
any meme's, so they keep working after a restart. An inline message lives in a chat the bot may
not be in: a vote edits its keyboard by `inline_message_id`; 🔁 swaps the picture in place
(`editMessageMedia`), for its author only, since it changes what everyone there sees.

Inline memes belong to the user's private chat with the bot: its settings, rate limits, /history
and /top.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from telegram import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InlineQuery,
    InlineQueryResultCachedPhoto,
    InlineQueryResultsButton,
    InputMediaPhoto,
    Message,
    Update,
    User,
)
from telegram.error import BadRequest, TelegramError
from telegram.ext import Application, ContextTypes

from bot.errors import MemeError, NoModelError, UnknownMemeError, Wording, error_text, report_unexpected
from bot.memes import ChatContext, MemeDraft
from bot.render import RenderedMeme
from bot.service import MemeService
from bot.storage import Score
from common.config import TelegramConfig

logger = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

# How a stored meme's message id says it is an inline message (which only its inline_message_id
# reaches), not a message of the chat the meme is stored under.
INLINE_REF = "inline:"
# ... and, after the message's 🔁, that it shows another meme now (so forgetting this one leaves it be).
REPLACED = "#replaced"
START_PARAMETER = "inline"  # /start inline: where the answers' button takes the user
MAX_BUTTON_TEXT = 120  # a longer text above the results is cut off by the apps anyway
ALBUM = 10  # sendMediaGroup's most photos per call
EXAMPLE = "drake no thanks | yes please"

NOT_SET_UP = "Inline memes aren't set up on this bot yet: tap to make memes with me instead"
HINT = f"Type a template and your words, e.g. {EXAMPLE}"
BUSY = "I'm busy making memes: type on, or try again in a moment"
UNAVAILABLE = "Inline memes aren't working right now: tap to make memes with me instead"
GONE = "That meme is gone from my memory, so I can't do that. Make a new one!"
FORGOTTEN_NOTE = (
    " It was sent inline, and Telegram doesn't let bots delete those: I took its buttons off; "
    "delete the message itself in that chat."
)
NOT_YOURS = "Only whoever sent this meme can swap it for another. Make your own: type my name and a template."
# Errors whose usual Telegram wording names a command: above inline results, what to type instead.
INLINE_WORDING: Wording = {
    NoModelError: lambda e: (
        f"No caption model here yet: write your own words after the template, e.g. {EXAMPLE}"
    ),
}


async def answer_press(
    send: Callable[[Callable[[], Awaitable[T]]], Awaitable[T]],
    query: CallbackQuery,
    text: str,
    alert: bool = False,
) -> None:
    """Answer a button press (a toast, or an alert), through `send`'s retries; a press too old to
    answer is only logged: the user already moved on."""
    try:
        await send(lambda: query.answer(text[:200], show_alert=alert))
    except BadRequest as exc:
        logger.info("telegram: could not answer a button press: %s", exc)


def already_shown(exc: BadRequest) -> bool:
    """An edit Telegram refused as changing nothing: two presses racing can leave the counts
    already right, and Telegram calls that an error."""
    return "not modified" in str(exc).lower()


@dataclass(frozen=True)
class InlineTiming:
    """How inline mode paces itself; the defaults are for people typing on a phone."""

    debounce_s: float = 0.4  # a pause this long in typing means the user is waiting for results
    answer_within_s: float = 8.0  # from the query's arrival; Telegram forgets it after about 10 s
    cache_s: float = 600.0  # our answer to a (user, query) is served again for this long
    telegram_cache_s: int = 30  # cache_time: how long Telegram may show an answer without asking
    keep_drafts_s: float = 3600.0  # how long a shown candidate can still be sent and stored
    results: int = 5  # candidates per query
    popular: int = 10  # templates shown for an empty query
    max_answers: int = 2000  # (user, query) answers kept; the oldest go first


class Expiring(Generic[K, V]):
    """A dict whose entries expire after `ttl_s` and that keeps at most `size` (oldest out first)."""

    def __init__(self, ttl_s: float, size: int, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._clock = clock
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if self._clock() - item[0] > self.ttl_s:
            del self._items[key]
            return None
        return item[1]

    def put(self, key: K, value: V) -> None:
        self._items[key] = (self._clock(), value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


@dataclass(frozen=True)
class Shown:
    """A candidate an answer showed: what is stored if it is sent."""

    draft: MemeDraft
    file_id: str  # the uploaded photo in the cache chat
    owner: int  # the user whose query it answered


@dataclass(frozen=True)
class Press:
    """A button under an inline message: on a stored meme (`meme_id`) or on a shown candidate
    not stored yet (`result_id`)."""

    action: str  # "vote" | "reroll"
    vote: int
    meme_id: int = 0
    result_id: str = ""


def pending_keyboard(result_id: str) -> InlineKeyboardMarkup:
    """The buttons a candidate is sent with, before it is stored and has a meme id."""
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("👍 0", callback_data=f"iv:{result_id}:1"),
                InlineKeyboardButton("👎 0", callback_data=f"iv:{result_id}:-1"),
                InlineKeyboardButton("🔁", callback_data=f"ir:{result_id}"),
            ]
        ]
    )


def parse_press(data: str) -> Press:
    """Callback data of a button under an inline message -> Press; ValueError when not ours."""
    parts = data.split(":")
    vote = {"1": 1, "-1": -1}
    if parts[0] in ("v", "iv") and len(parts) == 3 and parts[2] in vote:
        pending = parts[0] == "iv"
        return Press("vote", vote[parts[2]], 0 if pending else int(parts[1]), parts[1] if pending else "")
    if parts[0] in ("r", "ir") and len(parts) == 2:
        pending = parts[0] == "ir"
        return Press("reroll", 0, 0 if pending else int(parts[1]), parts[1] if pending else "")
    raise ValueError(f"unknown button data {data!r}")


def inline_context(platform: str, user: User | int) -> ChatContext:
    """Inline mode happens in chats the bot may not be in and is not told about, so a user's
    inline memes belong to their private chat with the bot (a private chat's id is its user's)."""
    user_id = user if isinstance(user, int) else user.id
    name = "" if isinstance(user, int) else user.full_name
    return ChatContext(platform, str(user_id), str(user_id), is_private=True, user_name=name)


def is_inline_ref(message_id: str | None) -> bool:
    return message_id is not None and message_id.startswith(INLINE_REF)


def clip_button(text: str) -> str:
    return text if len(text) <= MAX_BUTTON_TEXT else text[: MAX_BUTTON_TEXT - 1] + "…"


class CacheChatError(Exception):
    """The cache chat took no upload: inline mode cannot show anything until that is fixed."""


class InlineMemes:
    """Answers inline queries and handles what is sent from them. One per TelegramFrontEnd,
    which registers the handlers and lends its ways of calling the Bot API."""

    def __init__(
        self,
        service: MemeService,
        config: TelegramConfig,
        app: Application,
        *,
        platform: str,
        send: Callable[[Callable[[], Awaitable[T]]], Awaitable[T]],
        words: Callable[[MemeError], str],
        keyboard: Callable[[int, Score], InlineKeyboardMarkup],
        timing: InlineTiming = InlineTiming(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.config = config
        self.app = app
        self.platform = platform
        self.send = send  # runs a Bot API call with the front end's retries
        self._telegram_words = words  # a MemeError in Telegram's words
        self.keyboard = keyboard
        self.timing = timing
        self._answers: Expiring[tuple[int, str], tuple[str, ...]] = Expiring(
            timing.cache_s, timing.max_answers, clock
        )
        self._shown: Expiring[str, Shown] = Expiring(
            max(timing.keep_drafts_s, timing.cache_s), timing.max_answers * timing.results, clock
        )
        # inline_message_id -> the meme stored for it; one lock so a chosen_inline_result and a
        # press racing it store the meme once.
        self._kept: Expiring[str, int] = Expiring(timing.keep_drafts_s, timing.max_answers, clock)
        self._keeping = asyncio.Lock()
        self._latest: dict[int, str] = {}  # user -> their newest query id (the one to answer)
        self._work: dict[int, asyncio.Task[tuple[str, ...]]] = {}  # user -> candidates being made
        self._blanks: dict[str, str] = {}  # template slug -> file_id of its blank picture
        self._blanks_lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.config.inline_cache_chat)

    def words(self, error: MemeError) -> str:
        if any(cls in INLINE_WORDING for cls in type(error).__mro__):
            return error_text(error, INLINE_WORDING)
        return self._telegram_words(error)

    # --- queries ---

    async def on_query(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.inline_query
        if query is None:
            return
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        user = query.from_user.id
        self._latest[user] = query.id
        older = self._work.pop(user, None)
        if older is not None:
            older.cancel()  # the user typed on: that answer would never be seen
        try:
            await self._on_query(query, arrived)
        finally:
            if self._latest.get(user) == query.id:
                del self._latest[user]

    async def _on_query(self, query: InlineQuery, arrived: float) -> None:
        if not self.enabled:
            await self._answer(query, (), NOT_SET_UP, cache_time=300)
            return
        user = query.from_user.id
        text = " ".join(query.query.split())
        cached = self._answers.get((user, text))
        if cached is not None and all(self._shown.get(r) is not None for r in cached):
            await self._answer(query, cached)
            return
        ctx = inline_context(self.platform, query.from_user)
        if not text:
            await self._answer_popular(query, ctx)
            return
        await asyncio.sleep(self.timing.debounce_s)
        if self._latest.get(user) != query.id:
            return  # superseded while waiting: Telegram forgets a query nobody answers
        work = asyncio.create_task(self._make(ctx, text))
        self._work[user] = work
        left = self.timing.answer_within_s - (asyncio.get_running_loop().time() - arrived)
        try:
            await asyncio.wait({work}, timeout=max(0.0, left))
        except asyncio.CancelledError:  # the bot is stopping
            work.cancel()
            raise
        finally:
            if self._work.get(user) is work:
                del self._work[user]
        if work.cancelled():
            return  # superseded by the user's next keystroke
        if not work.done():
            work.cancel()
            logger.info(
                "inline: candidates not ready within %.1f s; answered busy", self.timing.answer_within_s
            )
            await self._answer(query, (), BUSY, cache_time=0)
            return
        try:
            result_ids = work.result()
        except MemeError as exc:
            await self._answer(query, (), self.words(exc), cache_time=0)
            return
        except CacheChatError:
            await self._answer(query, (), UNAVAILABLE, cache_time=0)
            return
        except Exception as exc:  # a bug: logged with a request id, and the query still answered
            await self._answer(query, (), report_unexpected(logger, "inline: a query", exc), cache_time=0)
            return
        self._answers.put((user, text), result_ids)
        await self._answer(query, result_ids)

    async def _make(self, ctx: ChatContext, text: str) -> tuple[str, ...]:
        """The candidates for `text`, made, uploaded and held; their result ids, best first."""
        template, prefix = self.service.split_template(text)
        candidates = await self.service.meme_candidates(ctx, template, prefix, self.timing.results)
        file_ids = await self._upload([c.image for c in candidates])
        # Result ids (at most 64 bytes, and in callback data) only point into memory: a random
        # part no other answer has, and the candidate's place.
        token = secrets.token_urlsafe(6)
        result_ids = []
        for place, (candidate, file_id) in enumerate(zip(candidates, file_ids, strict=True)):
            result_id = f"{token}.{place}"
            self._shown.put(result_id, Shown(candidate.draft, file_id, int(ctx.user_id)))
            result_ids.append(result_id)
        return tuple(result_ids)

    async def _answer_popular(self, query: InlineQuery, ctx: ChatContext) -> None:
        """An empty query: the most used templates, blank, with how to type a meme above them.
        Uploaded once; sending one shares the blank template (nothing is stored)."""
        templates = await self.service.popular_templates(ctx, self.timing.popular)
        try:
            async with self._blanks_lock:
                missing = [t for t in templates if t.slug not in self._blanks]
                if missing:
                    images = [await self.service.blank(t) for t in missing]
                    for template, file_id in zip(missing, await self._upload(images), strict=True):
                        self._blanks[template.slug] = file_id
        except CacheChatError:
            await self._answer(query, (), UNAVAILABLE, cache_time=0)
            return
        results = [
            InlineQueryResultCachedPhoto(
                f"tpl.{place}",
                self._blanks[t.slug],
                title=t.name,
                description=f"type: {t.slug} and your words",
            )
            for place, t in enumerate(templates)
        ]
        await self._send_answer(query, results, HINT, self.timing.telegram_cache_s)

    async def _answer(
        self,
        query: InlineQuery,
        result_ids: Sequence[str],
        button: str | None = None,
        cache_time: int | None = None,
    ) -> None:
        results = []
        for result_id in result_ids:
            shown = self._shown.get(result_id)
            if shown is None:
                continue
            results.append(
                InlineQueryResultCachedPhoto(
                    result_id,
                    shown.file_id,
                    title=shown.draft.template.name,
                    description=shown.draft.text[:200],
                    reply_markup=pending_keyboard(result_id),
                )
            )
        await self._send_answer(
            query, results, button, self.timing.telegram_cache_s if cache_time is None else cache_time
        )

    async def _send_answer(
        self,
        query: InlineQuery,
        results: list[InlineQueryResultCachedPhoto],
        button: str | None,
        cache_time: int,
    ) -> None:
        """answerInlineQuery, once: a retry of an answer that did arrive is refused as a second
        one, which only means it is there."""
        markup = (
            InlineQueryResultsButton(clip_button(button), start_parameter=START_PARAMETER) if button else None
        )
        try:
            await self.send(
                lambda: self.app.bot.answer_inline_query(
                    query.id, results, cache_time=cache_time, is_personal=True, button=markup
                )
            )
        except BadRequest as exc:
            logger.info("inline: could not answer a query: %s", exc)

    async def _upload(self, images: Sequence[RenderedMeme]) -> list[str]:
        """Upload pictures to the cache chat; their file_ids, in order (CacheChatError if refused)."""
        file_ids: list[str] = []
        try:
            for start in range(0, len(images), ALBUM):
                sent = await self._upload_album(images[start : start + ALBUM])
                file_ids += [message.photo[-1].file_id for message in sent]
        except TelegramError as exc:
            logger.warning(
                "inline: the cache chat %s took no upload (%s): check [telegram] inline_cache_chat "
                "and that the bot may post there",
                self.config.inline_cache_chat,
                exc,
            )
            raise CacheChatError(str(exc)) from exc
        return file_ids

    async def _upload_album(self, images: Sequence[RenderedMeme]) -> Sequence[Message]:
        """One call: a photo, or an album of 2 to 10 (silent: nobody needs a ping for these)."""
        chat, bot = self.config.inline_cache_chat, self.app.bot
        if len(images) == 1:
            photo = images[0]
            sent = await self.send(
                lambda: bot.send_photo(
                    chat, photo.data, filename=f"meme{photo.extension}", disable_notification=True
                )
            )
            return [sent]
        album = [InputMediaPhoto(i.data, filename=f"meme-{n}{i.extension}") for n, i in enumerate(images)]
        return await self.send(lambda: bot.send_media_group(chat, album, disable_notification=True))

    # --- what is sent ---

    async def on_chosen(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A candidate was sent (Telegram reports it with inline feedback on): store it, and give
        its buttons the meme's id."""
        chosen = update.chosen_inline_result
        if chosen is None or chosen.inline_message_id is None:
            return  # a blank template (no buttons, nothing to store)
        shown = self._shown.get(chosen.result_id)
        if shown is None:
            logger.info("inline: a sent candidate is no longer held; it is stored on no press")
            return
        meme_id, new = await self._kept_meme(chosen.inline_message_id, shown, chosen.from_user)
        if new:  # else a press stored it first, and its buttons show the votes already
            await self._show_counts(chosen.inline_message_id, meme_id, Score(0, 0))

    async def _kept_meme(self, inline_message_id: str, shown: Shown, sender: User | int) -> tuple[int, bool]:
        """The meme stored for an inline message, and whether it was stored just now."""
        async with self._keeping:
            meme_id = self._kept.get(inline_message_id)
            if meme_id is not None:
                return meme_id, False
            ctx = inline_context(self.platform, sender)
            meme_id = await self.service.keep(ctx, shown.draft, INLINE_REF + inline_message_id, shown.file_id)
            self._kept.put(inline_message_id, meme_id)
            return meme_id, True

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """👍 👎 🔁 under a message sent inline: the query has its inline_message_id and no message."""
        query = update.callback_query
        if query is None or query.inline_message_id is None:
            return
        inline_message_id = query.inline_message_id
        try:
            press = parse_press(query.data or "")
        except ValueError:
            await self._answer_press(query, "")
            return
        ctx = inline_context(self.platform, query.from_user)
        try:
            meme_id = press.meme_id
            if press.result_id:
                shown = self._shown.get(press.result_id)
                if shown is None:
                    raise UnknownMemeError(0)
                # Sent by whoever asked for it (without inline feedback this is the first we hear).
                meme_id, _ = await self._kept_meme(inline_message_id, shown, shown.owner)
            if press.action == "vote":
                score = await self.service.rate(ctx, meme_id, press.vote)
                await self._answer_press(query, f"👍 {score.up} · 👎 {score.down}")
                await self._show_counts(inline_message_id, meme_id, score)
            elif not await self.service.made_by(ctx, meme_id):
                await self._answer_press(query, NOT_YOURS, alert=True)
            else:
                await self._swap(query, inline_message_id, ctx, meme_id)
        except UnknownMemeError:
            await self._answer_press(query, GONE, alert=True)
        except MemeError as exc:
            await self._answer_press(query, self.words(exc), alert=True)
        except CacheChatError:
            await self._answer_press(query, UNAVAILABLE, alert=True)

    async def _swap(
        self, query: CallbackQuery, inline_message_id: str, ctx: ChatContext, meme_id: int
    ) -> None:
        """🔁 by its author: another meme like it, in place of it (the bot cannot post in that chat)."""
        made = await self.service.reroll(ctx, meme_id)
        await self._answer_press(query, "")
        (file_id,) = await self._upload([made.image])
        await self.send(
            lambda: self.app.bot.edit_message_media(
                InputMediaPhoto(file_id),
                inline_message_id=inline_message_id,
                reply_markup=self.keyboard(made.id, made.score),
            )
        )
        await self.service.attach_message(made.id, INLINE_REF + inline_message_id, file_id)
        await self.service.attach_message(meme_id, INLINE_REF + inline_message_id + REPLACED)
        async with self._keeping:
            self._kept.put(inline_message_id, made.id)

    async def _show_counts(self, inline_message_id: str, meme_id: int, score: Score) -> None:
        try:
            await self.send(
                lambda: self.app.bot.edit_message_reply_markup(
                    inline_message_id=inline_message_id, reply_markup=self.keyboard(meme_id, score)
                )
            )
        except BadRequest as exc:
            if not already_shown(exc):
                raise

    async def _answer_press(self, query: CallbackQuery, text: str, alert: bool = False) -> None:
        await answer_press(self.send, query, text, alert)

    async def take_down(self, message_ref: str) -> str:
        """A forgotten meme sent inline: bots cannot delete inline messages, so its buttons go (a
        vote there would count for nothing). Returns what to add to the reply about it."""
        if message_ref.endswith(REPLACED):
            return ""  # its message shows another meme now (🔁): nothing of this one is left there
        inline_message_id = message_ref.removeprefix(INLINE_REF)
        try:
            await self.send(
                lambda: self.app.bot.edit_message_reply_markup(inline_message_id=inline_message_id)
            )
        except BadRequest as exc:
            logger.info("telegram: could not take the buttons off a forgotten inline meme: %s", exc)
        return FORGOTTEN_NOTE
