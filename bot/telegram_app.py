"""The Telegram front end: python-telegram-bot handlers that translate to MemeService calls.

Nothing about memes is decided here. A command becomes a `ChatContext` plus arguments,
the service's answer becomes a photo with an inline keyboard (👍 n, 👎 n, 🔁), and a
`MemeError` becomes a short reply, worded for Telegram where it names a command or who may
change a setting (`WORDING`). Button data carries the meme id, so buttons on old messages
keep working after a restart.

Telegram talks to whatever Bot API server `[telegram] api_url` names: the public one, a
self-hosted server (which allows larger files), or the tests' fake.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from telegram import (
    BotCommand,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    MaybeInaccessibleMessage,
    Message,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction, ChatMemberStatus, ChatType
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    ChosenInlineResultHandler,
    CommandHandler,
    ContextTypes,
    InlineQueryHandler,
    MessageHandler,
    filters,
)

from bot.errors import (
    AdminOnlyError,
    BadPeriodError,
    BadPictureError,
    BannedWordError,
    MemeError,
    MemeNumberError,
    NoSuchMemeError,
    NotAMemeMessageError,
    NoTemplatesEnabledError,
    SettingsUsageError,
    TemplateNotEnabledError,
    UnknownTemplateError,
    Wording,
    caption_hints,
    error_text,
    report_unexpected,
)
from bot.frontend import StartError
from bot.memes import (
    ChatContext,
    ForgottenMeme,
    Leaderboard,
    LeaderboardEntry,
    MadeMeme,
    Picture,
    meme_number,
)
from bot.render import missing_note
from bot.service import MemeService
from bot.settings import RESET_WORDS, format_settings, settings_help, split_changes
from bot.storage import Score
from bot.telegram_inline import InlineMemes, InlineTiming, already_shown, answer_press, is_inline_ref
from common.config import TelegramConfig
from common.template import MAX_UPLOAD_BYTES, is_upload_key, too_big

logger = logging.getLogger(__name__)
T = TypeVar("T")

PLATFORM = "telegram"
MAX_TEXT = 4096  # Telegram's limit for a message
MAX_CAPTION = 1024  # ... and for a photo caption
HISTORY_SIZE = 10
SEARCH_RESULTS = 15
# Telegram sends an anonymous group admin's messages from this account, with the group as sender_chat.
ANONYMOUS_ADMIN_ID = 1087968824
# A photo's caption that is one of the commands taking a picture, maybe addressed "@bot".
PICTURE_COMMAND = r"^/(?i:meme|caption)(@\w+)?(\s|$)"

COMMANDS = (
    ("meme", "Make a meme: /meme [template] [start of the caption]"),
    ("caption", "Your own text: /caption template top text | bottom text"),
    ("templates", "List or search templates: /templates [words]"),
    ("history", "Your last memes"),
    ("top", "This chat's best memes: /top [week|month|all]"),
    ("forget", "Delete one of your memes: reply to it with /forget, or /forget NUMBER"),
    ("settings", "Show or change this chat's settings (admins)"),
    ("help", "How to use this bot"),
)

HELP = """I make memes with my own caption model.

/meme — a random meme
/meme change-my-mind — a meme on that template
/meme change-my-mind pineapple on — I finish your caption ("|" moves to the next box)
/caption drake no thanks | yes please — your own text, box by box
Your own picture: reply to a photo with /meme [start of the caption] or /caption top | bottom, or send
a photo with the command as its caption. A picture of a known template is recognised.
/templates [words] — find a template
/history — your last memes, with their numbers
/top [week|month|all] — this chat's best memes (👍 minus 👎), shown again
/forget — reply to one of your memes to delete it everywhere (or /forget NUMBER from /history)
/settings — this chat's settings; admins change them with /settings temperature 0.9

In any chat, type my @username and then a template and words, e.g. drake no thanks | yes please,
and pick one of the memes I show.

Vote with 👍 / 👎 under a meme; 🔁 makes another one like it."""

EXAMPLE_CAPTION = "/caption drake no thanks | yes please"
# Errors whose advice names a command or who may change a setting, in Telegram's words: its
# commands take their arguments after a space, and a group's settings are its admins'.
WORDING: Wording = {
    **caption_hints(EXAMPLE_CAPTION),
    UnknownTemplateError: lambda e: f"{e.user_message}\nSee them all with /templates",
    AdminOnlyError: lambda e: "Only the group's admins can change its settings.",
    TemplateNotEnabledError: lambda e: (
        f"{e.template.name} isn't enabled in this chat. "
        "The group's admins choose the templates with /settings templates."
    ),
    NoTemplatesEnabledError: lambda e: (
        "No templates are enabled in this chat. The group's admins can allow them all again "
        "with /settings templates all"
    ),
    BannedWordError: lambda e: (
        f'{e.what} has a word I don\'t write ("{e.hidden}"). Try other words; '
        "admins can switch the filter off with /settings filter off"
    ),
    SettingsUsageError: lambda e: (
        f"Name a setting and a value, e.g. /settings temperature 0.9 (or: {RESET_WORDS[0]})"
    ),
    BadPeriodError: lambda e: f'There\'s no "/top {e.given[:40]}": try /top week, /top month or /top all',
    MemeNumberError: lambda e: (
        (f'"{e.given[:40]}" isn\'t a meme number. ' if e.given else "Which meme? ")
        + "Reply to your meme with /forget, or give its number from /history, e.g. /forget 12"
    ),
    NoSuchMemeError: lambda e: f"There's no meme #{e.meme_id}. /history lists yours with their numbers.",
    NotAMemeMessageError: lambda e: (
        "That message isn't one of my memes. Reply to your meme itself with /forget, "
        "or give its number from /history or /top, e.g. /forget 12"
    ),
}
FORGET_STUCK = (
    " I couldn't delete its message (Telegram lets bots delete theirs for 48 hours only): "
    "the group's admins can."
)


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait on the Bot API (the long poll adds its own timeout on top of `read_s`)."""

    connect_s: float = 10.0
    read_s: float = 15.0
    write_s: float = 15.0
    media_write_s: float = 30.0
    pool_s: float = 5.0


@dataclass(frozen=True)
class SendRetry:
    """How sending a reply retries a failing server. A timed-out upload may have arrived
    after all: a rare duplicate is better than a lost meme."""

    attempts: int = 3
    backoff_s: float = 1.0  # doubled after each failure
    max_wait_s: float = 30.0  # a longer flood-control wait gives up instead


class TelegramStartError(StartError):
    """The bot could not connect; the message says what to check."""


# --- translating ----------------------------------------------------------------------------------


def keyboard(meme_id: int, score: Score) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(f"👍 {score.up}", callback_data=f"v:{meme_id}:1"),
                InlineKeyboardButton(f"👎 {score.down}", callback_data=f"v:{meme_id}:-1"),
                InlineKeyboardButton("🔁", callback_data=f"r:{meme_id}"),
            ]
        ]
    )


def parse_button(data: str) -> tuple[str, int, int]:
    """Callback data -> (action, meme id, vote); ValueError when it is not ours."""
    parts = data.split(":")
    if parts[0] == "v" and len(parts) == 3 and parts[2] in ("1", "-1"):
        return "vote", int(parts[1]), int(parts[2])
    if parts[0] == "r" and len(parts) == 2:
        return "reroll", int(parts[1]), 0
    raise ValueError(f"unknown button data {data!r}")


def command_argument(message: Message) -> str:
    """Everything after the /command (and @botname), as typed: spacing and "|" kept. The command
    is the message's text, or a photo's caption."""
    text = message.text or message.caption or ""
    for entity in message.entities or message.caption_entities:
        if entity.type == "bot_command" and entity.offset == 0:
            return text[entity.length :].strip()
    return text.partition(" ")[2].strip()


@dataclass(frozen=True)
class PictureRef:
    file_id: str
    size: int | None  # bytes, where Telegram says


def picture_of(message: Message) -> PictureRef | None:
    """The picture a command is about: the message's own (a photo or an image file with the
    command as its caption), else the one in the message it replies to."""
    for candidate in (message, message.reply_to_message):
        if candidate is None:
            continue
        if candidate.photo:  # sizes smallest first: the largest is the picture itself
            largest = candidate.photo[-1]
            return PictureRef(largest.file_id, largest.file_size)
        document = candidate.document
        if document is not None and (document.mime_type or "").startswith("image/"):
            return PictureRef(document.file_id, document.file_size)
    return None


def split_first_word(text: str) -> tuple[str, str]:
    """ "drake no thanks | yes" -> ("drake", "no thanks | yes"); any whitespace separates."""
    parts = text.split(maxsplit=1)
    return (parts[0] if parts else ""), (parts[1].strip() if len(parts) > 1 else "")


def meme_caption(made: MadeMeme) -> str:
    """The caption under the photo: the text (for screen readers and search) and the template."""
    if made.template.is_upload:
        source = "your picture"
    elif made.found is not None and made.found.how == "recognized":
        source = f"recognised: {made.template.name} · /meme {made.template.slug}"
    elif made.found is not None and made.found.how == "picked":
        others = ", ".join(f"/meme {t.slug}" for t in made.found.alternatives)
        source = f"I picked {made.template.name} for your words" + (f"; or try {others}" if others else "")
    else:
        source = f"{made.template.name} · /meme {made.template.slug}"
    caption = f"{made.text}\n— {source}"
    caption = caption if len(caption) <= MAX_CAPTION else caption[: MAX_CAPTION - 1] + "…"
    note = missing_note(made.image.missing)  # characters no font here could draw: say so
    if note:
        caption = caption[: MAX_CAPTION - len(note) - 2] + "\n\n" + note
    return caption


def reply_options(message: MaybeInaccessibleMessage) -> dict[str, object]:
    """In groups an answer quotes what it answers; in a forum topic it stays in the topic."""
    options: dict[str, object] = {}
    if message.chat.type != ChatType.PRIVATE:
        options["reply_parameters"] = ReplyParameters(message.message_id, allow_sending_without_reply=True)
    if isinstance(message, Message) and message.is_topic_message and message.message_thread_id:
        options["message_thread_id"] = message.message_thread_id
    return options


def clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def display_name(update: Update) -> str:
    """The sender's name as Telegram shows it: an anonymous admin posts as the group itself."""
    message = update.effective_message
    if update.callback_query is None and message is not None and message.sender_chat is not None:
        return message.sender_chat.effective_name or ""
    user = update.effective_user
    return user.full_name if user is not None else ""


def author_of(entry: LeaderboardEntry, private: bool) -> str:
    # No name is kept for memes made in a private chat (its board is the user's own) or before names were kept.
    return entry.author or ("you" if private else "someone")


def leaderboard_text(board: Leaderboard, private: bool) -> str:
    if not board.entries:
        if board.period.days is None:
            return "No memes here with more 👍 than 👎 yet. Vote under the memes you like!"
        return (
            f"No memes here from {board.period.label} with more 👍 than 👎 yet. "
            "Vote under the memes you like, or see all time with /top all"
        )
    lines = [f"🏆 Best memes here, {board.period.label}:"]
    for entry in board.entries:
        meme = entry.meme
        on = "a picture" if is_upload_key(meme.template) else meme.template
        lines.append(
            f"{entry.rank}. {author_of(entry, private)}: {meme.score.value:+d} (👍 {meme.up} 👎 {meme.down})"
            f" · #{meme.id} {on}: {entry.text or '(no text)'}"
        )
    return "\n".join(lines)


def repost_caption(entry: LeaderboardEntry, private: bool) -> str:
    return f"{entry.rank}. {author_of(entry, private)} · {entry.meme.score.value:+d} · #{entry.meme.id}"[
        :MAX_CAPTION
    ]


# --- the front end ----------------------------------------------------------------------------------

# What the bot handles; Telegram sends nothing else (getUpdates and setWebhook both take it).
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY, Update.INLINE_QUERY, Update.CHOSEN_INLINE_RESULT]


class TelegramFrontEnd:
    """Owns one python-telegram-bot Application; `start()` begins polling (or serving the webhook,
    [telegram] webhook_url), `close()` ends it."""

    def __init__(
        self,
        service: MemeService,
        config: TelegramConfig,
        *,
        timeouts: Timeouts = Timeouts(),
        retry: SendRetry = SendRetry(),
        inline: InlineTiming | None = None,
    ) -> None:
        if not config.token:
            raise TelegramStartError(
                "Telegram is enabled but has no token: set the TELEGRAM_TOKEN environment variable "
                "(or [telegram] token) to the token @BotFather gave you"
            )
        self.service = service
        self.config = config
        self.retry = retry
        self.app: Application = (
            ApplicationBuilder()
            .token(config.token)
            .base_url(config.api_url)
            .base_file_url(config.file_url)
            .connect_timeout(timeouts.connect_s)
            .read_timeout(timeouts.read_s)
            .write_timeout(timeouts.write_s)
            .media_write_timeout(timeouts.media_write_s)
            .pool_timeout(timeouts.pool_s)
            .get_updates_connect_timeout(timeouts.connect_s)
            .get_updates_read_timeout(timeouts.read_s)
            .get_updates_pool_timeout(timeouts.pool_s)
            # Memes take a moment to make: one chat's request must not hold up the others.
            .concurrent_updates(True)
            .job_queue(None)
            .build()
        )
        only_new = filters.UpdateType.MESSAGE  # an edited "/meme" must not make a second meme
        handlers: dict[str, Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable[None]]] = {
            "start": self.on_help,
            "help": self.on_help,
            "meme": self.on_meme,
            "caption": self.on_caption,
            "templates": self.on_templates,
            "history": self.on_history,
            "top": self.on_top,
            "forget": self.on_forget,
            "settings": self.on_settings,
        }
        for name, callback in handlers.items():
            self.app.add_handler(CommandHandler(name, callback, filters=only_new))
        # A photo (or an image file) whose caption is the command: CommandHandler reads text only.
        picture = filters.PHOTO | filters.Document.IMAGE
        self.app.add_handler(
            MessageHandler(
                only_new & picture & filters.CaptionRegex(PICTURE_COMMAND), self.on_picture_command
            )
        )
        self.app.add_handler(CallbackQueryHandler(self.on_button, pattern=r"^(v|r):"))
        # Inline mode (bot/telegram_inline.py): queries, what is sent from them, and the buttons
        # of candidates sent before they were stored.
        self.inline = InlineMemes(
            service,
            config,
            self.app,
            platform=PLATFORM,
            send=self.with_retries,
            words=self.error_text,
            keyboard=keyboard,
            timing=inline or InlineTiming(),
        )
        self.app.add_handler(InlineQueryHandler(self.inline.on_query))
        self.app.add_handler(ChosenInlineResultHandler(self.inline.on_chosen))
        self.app.add_handler(CallbackQueryHandler(self.inline.on_button, pattern=r"^i[vr]:"))
        self.app.add_error_handler(self.on_error)

    # --- lifecycle ---

    async def start(self) -> None:
        try:
            await self.app.initialize()  # getMe: checks the token and learns the bot's username
        except InvalidToken as exc:
            raise TelegramStartError(
                f"Telegram rejected the bot token ({exc}): check TELEGRAM_TOKEN"
            ) from exc
        except TelegramError as exc:
            raise TelegramStartError(
                f"cannot reach the Telegram Bot API at {self.config.api_url} ({exc}): "
                "check the network or [telegram] api_url"
            ) from exc
        try:
            await self.app.bot.set_my_commands([BotCommand(name, text) for name, text in COMMANDS])
        except TelegramError as exc:  # the menu is a nicety; the bot works without it
            logger.warning("could not register the command menu: %s", exc)
        if self.config.webhook_url:
            await self._start_webhook()
        else:
            assert self.app.updater is not None
            await self.app.updater.start_polling(
                timeout=dt.timedelta(seconds=self.config.poll_timeout_s),
                bootstrap_retries=3,
                allowed_updates=ALLOWED_UPDATES,
                error_callback=self.on_polling_error,
            )
            logger.info("telegram: polling as @%s", self.app.bot.username)
        await self.app.start()
        if not self.inline.enabled:
            logger.info("telegram: inline mode is off: set [telegram] inline_cache_chat to use it")

    async def _start_webhook(self) -> None:
        """Serve Telegram's POSTs on [telegram] webhook_listen and tell Telegram the public URL
        (setWebhook). PTB's server answers 403 to a request without the secret token. Several
        processes may all set the same URL; none deletes it on stopping, so the others keep
        receiving while one restarts."""
        assert self.app.updater is not None
        host, port = self.config.webhook_address
        path = urlsplit(self.config.webhook_url).path.strip("/")
        try:
            await self.app.updater.start_webhook(
                listen=host,
                port=port,
                url_path=path,
                webhook_url=self.config.webhook_url,
                secret_token=self.config.webhook_secret,
                allowed_updates=ALLOWED_UPDATES,
                bootstrap_retries=3,
            )
        except OSError as exc:
            raise TelegramStartError(
                f"cannot listen for Telegram's webhook on {self.config.webhook_listen} "
                f"({exc.strerror or exc}): "
                "is another process using that port? Give each process its own [telegram] webhook_listen"
            ) from exc
        except TelegramError as exc:
            raise TelegramStartError(
                f"Telegram refused the webhook {self.config.webhook_url} ({exc}): "
                "check [telegram] webhook_url"
            ) from exc
        logger.info(
            "telegram: receiving updates as @%s on %s/%s (webhook %s)",
            self.app.bot.username,
            self.config.webhook_listen,
            path,
            self.config.webhook_url,
        )

    async def close(self) -> None:
        """Stop fetching updates, let the handlers in progress finish, close the connections."""
        if self.app.updater is not None and self.app.updater.running:
            await self.app.updater.stop()
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()

    @staticmethod
    def on_polling_error(exc: TelegramError) -> None:
        # The library retries with a growing pause; one line per failure is enough.
        logger.warning("telegram: fetching updates failed (%s); retrying", exc)

    # --- commands ---

    async def on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self.reply(update.effective_message, HELP)

    async def on_meme(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        ctx = self.context(update)
        ref = picture_of(message)
        if ref is not None:  # the whole argument is the caption's start: the picture is the template
            prefix = command_argument(message)

            async def on_picture() -> MadeMeme:
                return await self.service.make_meme(ctx, await self.fetch_picture(ref), prefix)

            await self.make_and_send(message, on_picture)
            return
        template, prefix = self.service.split_template(command_argument(message))
        await self.make_and_send(message, lambda: self.service.make_meme(ctx, template, prefix))

    async def on_caption(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        ctx = self.context(update)
        ref = picture_of(message)
        if ref is not None:
            boxes = command_argument(message).split("|")

            async def on_picture() -> MadeMeme:
                return await self.service.caption(ctx, await self.fetch_picture(ref), boxes)

            await self.make_and_send(message, on_picture)
            return
        template, text = split_first_word(command_argument(message))
        await self.make_and_send(message, lambda: self.service.caption(ctx, template, text.split("|")))

    async def on_picture_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        caption = update.effective_message.caption or ""
        command, _, mention = caption.split(maxsplit=1)[0][1:].partition("@")
        if mention and mention.lower() != (self.app.bot.username or "").lower():
            return  # addressed to another bot in the group
        await (self.on_meme if command.lower() == "meme" else self.on_caption)(update, context)

    async def fetch_picture(self, ref: PictureRef) -> Picture:
        """The picture's bytes from Telegram; BadPictureError (worded) when it cannot be had."""
        if ref.size is not None and ref.size > MAX_UPLOAD_BYTES:  # refused before downloading it
            raise BadPictureError(too_big(ref.size))
        try:
            file = await self.app.bot.get_file(ref.file_id)
            data = await file.download_as_bytearray()
        except TelegramError as exc:
            logger.info("telegram: could not download a picture: %s", exc)
            raise BadPictureError("I couldn't download that picture from Telegram: send it again.") from None
        return Picture(bytes(data))

    async def on_templates(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = command_argument(update.effective_message)
        if not query:
            slugs = ", ".join(t.slug for t in self.service.templates(limit=1000))
            text = f"All templates (use the name after /meme):\n{slugs}"
        else:
            found = self.service.templates(query, SEARCH_RESULTS)
            lines = [f"{t.slug} — {t.name}" for t in found]
            text = "\n".join(lines) if lines else f'No template matches "{query}". Try /templates for all.'
        await self.reply(update.effective_message, text)

    async def on_history(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        memes = await self.service.history(self.context(update), HISTORY_SIZE)
        if not memes:
            await self.reply(update.effective_message, "You haven't made any memes yet. Try /meme")
            return
        lines = [
            f"#{m.id} {m.template}: {' | '.join(b for b in m.boxes if b) or '(empty)'}  👍 {m.up} 👎 {m.down}"
            for m in memes
        ]
        await self.reply(update.effective_message, "Your last memes:\n" + "\n".join(lines))

    async def on_top(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The chat's best memes: a ranked list, then the memes themselves sent again by file_id
        (no rendering; it works even where the original message was deleted)."""
        message = update.effective_message
        ctx = self.context(update)
        try:
            board = await self.service.leaderboard(ctx, command_argument(message))
        except MemeError as exc:
            await self.reply(message, self.error_text(exc))
            return
        await self.reply(message, leaderboard_text(board, ctx.is_private))
        # Memes from before file_ids were kept are in the list only.
        shown = [e for e in board.entries if e.meme.media_ref]
        try:
            if len(shown) == 1:
                await self.with_retries(
                    lambda: self.app.bot.send_photo(
                        message.chat.id,
                        shown[0].meme.media_ref,
                        caption=repost_caption(shown[0], ctx.is_private),
                        **reply_options(message),
                    )
                )
            elif shown:  # one album: 2 to 10 photos (LEADERBOARD_SIZE is within that)
                album = [
                    InputMediaPhoto(e.meme.media_ref, caption=repost_caption(e, ctx.is_private))
                    for e in shown
                ]
                await self.with_retries(
                    lambda: self.app.bot.send_media_group(message.chat.id, album, **reply_options(message))
                )
        except BadRequest as exc:
            # A file_id Telegram no longer takes (the bot's token changed, say): the list stands.
            logger.info("telegram: could not show the leaderboard's memes again: %s", exc)

    async def on_forget(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Delete one of the sender's memes: the one their /forget replies to, or /forget NUMBER."""
        message = update.effective_message
        ctx = self.context(update)
        argument = command_argument(message)
        try:
            if argument:
                meme_id = meme_number(argument)
            elif message.reply_to_message is not None:
                meme_id = await self.service.meme_at(ctx, str(message.reply_to_message.message_id))
            else:
                raise MemeNumberError("")
            forgotten = await self.service.forget(ctx, meme_id)
        except MemeError as exc:
            await self.reply(message, self.error_text(exc))
            return
        text = f"Forgotten: meme #{forgotten.id} is gone from /history, /top and the exports, votes and all."
        if is_inline_ref(forgotten.message_id):  # sent inline: bots cannot delete those
            text += await self.inline.take_down(forgotten.message_id or "")
        elif not await self.take_down(forgotten):
            text += FORGET_STUCK
        await self.reply(message, text)

    async def take_down(self, forgotten: ForgottenMeme) -> bool:
        """Delete a forgotten meme's message; False when it is still up (too old for a bot to
        delete: then at least its buttons go, votes on it would count for nothing)."""
        if forgotten.chat_id is None or forgotten.message_id is None:
            return True  # no message of it that we know of, here or anywhere
        chat_id, message_id = int(forgotten.chat_id), int(forgotten.message_id)
        try:
            await self.with_retries(lambda: self.app.bot.delete_message(chat_id, message_id))
            return True
        except BadRequest as exc:
            if "not found" in str(exc).lower():
                return True  # someone deleted it already
            logger.info("telegram: could not delete a forgotten meme's message: %s", exc)
        try:
            await self.with_retries(lambda: self.app.bot.edit_message_reply_markup(chat_id, message_id))
        except BadRequest as exc:
            logger.info("telegram: could not take the buttons off a forgotten meme: %s", exc)
        return False

    async def on_settings(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        argument = command_argument(message)
        try:
            if not argument:
                values = await self.service.get_settings(self.context(update))
                text = (
                    "Settings here:\n"
                    + format_settings(values)
                    + f"\n\nAdmins change one with /settings NAME VALUE (or NAME {RESET_WORDS[0]}), "
                    + "e.g. /settings temperature 0.9\n"
                    + settings_help()
                )
            else:
                ctx = self.context(update, is_admin=await self.is_admin(update))
                values = await self.service.set_settings(ctx, split_changes(argument))
                text = "Saved. Settings here now:\n" + format_settings(values)
        except MemeError as exc:
            text = self.error_text(exc)
        await self.reply(message, text)

    # --- buttons ---

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query.inline_message_id is not None:  # a meme sent inline: no message, maybe no chat of ours
            await self.inline.on_button(update, context)
            return
        try:
            action, meme_id, vote = parse_button(query.data or "")
        except ValueError:
            await query.answer()
            return
        ctx = self.context(update)
        try:
            if action == "vote":
                score = await self.service.rate(ctx, meme_id, vote)
                await self.answer(query, f"👍 {score.up} · 👎 {score.down}")
                await self.update_counts(query, meme_id, score)
            else:
                made = await self.service.reroll(ctx, meme_id)
                await self.answer(query, "")
                await self.send_meme(query.message, made)
        except MemeError as exc:
            await self.answer(query, self.error_text(exc), alert=True)

    async def update_counts(self, query: CallbackQuery, meme_id: int, score: Score) -> None:
        try:
            await self.with_retries(lambda: query.edit_message_reply_markup(keyboard(meme_id, score)))
        except BadRequest as exc:
            if not already_shown(exc):
                raise

    async def answer(self, query: CallbackQuery, text: str, alert: bool = False) -> None:
        await answer_press(self.with_retries, query, text, alert)

    # --- sending ---

    async def make_and_send(self, message: Message, make: Callable[[], Awaitable[MadeMeme]]) -> None:
        """Show "sending a photo…", make the meme, send it; a MemeError becomes a reply."""
        try:
            await self.app.bot.send_chat_action(message.chat.id, ChatAction.UPLOAD_PHOTO)
        except TelegramError:
            pass  # only a hint to the user
        try:
            made = await make()
        except MemeError as exc:
            await self.reply(message, self.error_text(exc))
            return
        await self.send_meme(message, made)

    async def send_meme(self, reply_to: MaybeInaccessibleMessage | None, made: MadeMeme) -> None:
        if reply_to is None:  # a press on a message Telegram no longer shows us: nowhere to answer
            return
        sent = await self.with_retries(
            lambda: self.app.bot.send_photo(
                reply_to.chat.id,
                made.image.data,
                filename=f"meme-{made.id}{made.image.extension}",
                caption=meme_caption(made),
                reply_markup=keyboard(made.id, made.score),
                **reply_options(reply_to),
            )
        )
        # The sent photo's file_id shows it again (in /top) without rendering or uploading it.
        file_id = sent.photo[-1].file_id if sent.photo else None
        await self.service.attach_message(made.id, str(sent.message_id), file_id)

    async def reply(self, message: Message, text: str) -> None:
        await self.with_retries(
            lambda: self.app.bot.send_message(message.chat.id, clip(text), **reply_options(message))
        )

    async def with_retries(self, send: Callable[[], Awaitable[T]]) -> T:
        """Run a Bot API call, retrying server errors, timeouts and flood control."""
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return await send()
            except BadRequest:
                raise  # our request is wrong: sending it again cannot help
            except RetryAfter as exc:
                # The public `retry_after` changes type with PTB_TIMEDELTA and warns; the
                # library's own retry loop reads this timedelta too.
                wait = exc._retry_after.total_seconds()
                if wait > self.retry.max_wait_s or attempt == self.retry.attempts:
                    raise
            except NetworkError as exc:  # includes TimedOut and 5xx replies
                if attempt == self.retry.attempts:
                    raise
                wait = self.retry.backoff_s * 2 ** (attempt - 1)
                logger.warning("telegram: a send failed (%s); retry %d in %.1f s", exc, attempt, wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    # --- who and where ---

    def context(self, update: Update, is_admin: bool = False) -> ChatContext:
        chat, user = update.effective_chat, update.effective_user
        private = chat.type == ChatType.PRIVATE
        return ChatContext(
            platform=PLATFORM,
            chat_id=str(chat.id),
            user_id=str(user.id if user else chat.id),
            is_admin=is_admin or private,  # in a private chat the user owns the settings
            is_private=private,
            user_name=display_name(update),
        )

    async def is_admin(self, update: Update) -> bool:
        """Whether the sender administers the chat (asked of Telegram each time: admins change)."""
        chat, message = update.effective_chat, update.effective_message
        if chat.type == ChatType.PRIVATE:
            return True
        if message.sender_chat is not None and message.sender_chat.id == chat.id:
            return True  # an anonymous admin, posting as the group itself
        if update.effective_user is None or update.effective_user.id == ANONYMOUS_ADMIN_ID:
            return False
        member = await self.with_retries(lambda: chat.get_member(update.effective_user.id))
        return member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)

    # --- errors ---

    @staticmethod
    def error_text(exc: MemeError) -> str:
        return error_text(exc, WORDING)

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Anything unexpected: one log line with a request id, and a short reply that quotes
        it, so the bot stays up and the user is not left waiting."""
        text = report_unexpected(logger, "telegram: handling an update", context.error)
        if not isinstance(update, Update):
            return
        try:
            if update.callback_query is not None:
                await update.callback_query.answer(text[:200], show_alert=True)
            elif update.effective_message is not None:
                await self.app.bot.send_message(
                    update.effective_message.chat.id, text, **reply_options(update.effective_message)
                )
        except TelegramError as exc:  # the server is failing too: the log line is all we can do
            logger.warning("telegram: could not send the error reply: %s", exc)
