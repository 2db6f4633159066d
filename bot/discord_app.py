"""The Discord front end: slash commands and buttons, translated into MemeService calls.

Start it with `DiscordFrontEnd(service, config.discord)`, `await start()`, and `await close()`
on shutdown. Everything a user sees comes from the service; this module only maps Discord
interactions to service calls and service results (or typed errors) back to Discord replies,
worded for Discord where they name a command (its options) or who may change a setting
(members with Manage Server): `WORDING`.

Meme messages carry three buttons whose custom ids hold the meme id (`meme:up:42`). They are
`DynamicItem`s registered at start-up, so presses on messages posted before a restart still
reach the bot: nothing about a message has to be remembered in memory.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sys
from collections.abc import Awaitable
from typing import Any

import aiohttp
import discord
from discord import app_commands

from bot.errors import (
    AdminOnlyError,
    BadPeriodError,
    BadPictureError,
    BannedWordError,
    MemeError,
    MemeNumberError,
    NoSuchMemeError,
    NoTemplatesEnabledError,
    SettingsUsageError,
    TemplateNotEnabledError,
    Wording,
    caption_hints,
    error_text,
    report_unexpected,
)
from bot.frontend import StartError
from bot.memes import (
    PERIODS,
    ChatContext,
    ForgottenMeme,
    Leaderboard,
    LeaderboardEntry,
    MadeMeme,
    MemeOptions,
    Picture,
    meme_number,
)
from bot.render import missing_note
from bot.service import MemeService
from bot.settings import (
    RESET_WORDS,
    SETTINGS,
    ChatSettings,
    find_setting,
    format_settings,
)
from bot.storage import Score, StoredMeme
from common.catalog import Template
from common.config import DiscordConfig
from common.template import MAX_UPLOAD_BYTES, too_big
from model.requests import DECODING_METHODS

_log = logging.getLogger(__name__)

PLATFORM = "discord"
MAKE_A_MEME = "Make a meme"  # the message context-menu command (a name of up to 32 characters)
# What is left out of a message's text before it becomes a caption: links, user/role/channel
# mentions, custom emoji (a caption would show their raw <...> codes), @everyone and @here.
NOT_CAPTION = re.compile(r"https?://\S+|<(?:@[!&]?|#)\d+>|<a?:\w+:\d+>|@(?:everyone|here)\b")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
MAX_CHOICES = 25  # Discord's limit for autocomplete and choice lists
MAX_MESSAGE_CHARS = 2000
# /meme's method list from the decoding methods' table, /memeconfig's from the settings table.
METHOD_CHOICES = [
    app_commands.Choice(name=f"{m.name}: {m.help}"[:100], value=m.name) for m in DECODING_METHODS
]
SETTING_CHOICES = [app_commands.Choice(name=s.summary[:100], value=s.name) for s in SETTINGS]
PERIOD_CHOICES = [app_commands.Choice(name=f"{p.name}: {p.label}", value=p.name) for p in PERIODS]
# /top looks for deleted messages among what it is about to show, and refills the board, this
# many times at most (each round fetches the shown memes' messages once).
DELETED_CHECK_ROUNDS = 3
MAX_LEADERBOARD_CAPTION = 120  # characters of a caption in /top's list
BUTTON_EMOJI = {"up": "👍", "down": "👎", "again": "🔁"}

HELP_TEXT = """\
**memebot** writes meme captions with its own little language model.
`/meme template prefix method` a meme; start the caption yourself with `prefix` (`|` moves to the next box)
`/caption template text` your own caption, boxes separated by `|`
`/templates query` find a template
`/history` your recent memes, with their numbers
`/top period` this server's best memes (👍 minus 👎), with links to them
`/forget meme` delete one of your memes from history, `/top` and exports
`/memeconfig` this server's settings (Manage Server only)
Under each meme: 👍 / 👎 rate it, 🔁 makes another one like it."""

EXAMPLE_CAPTION = "`/caption template:drake text:no thanks | yes please`"
# Errors whose advice names a command or who may change a setting, in Discord's words: slash
# commands take named options, and a server's settings are for members with Manage Server.
WORDING: Wording = {
    **caption_hints(EXAMPLE_CAPTION, "`/caption`"),
    AdminOnlyError: lambda e: "Only members with Manage Server can change this server's settings.",
    TemplateNotEnabledError: lambda e: (
        f"{e.template.name} isn't enabled on this server. Members with Manage Server choose the "
        "templates with `/memeconfig setting:allowed_templates`."
    ),
    NoTemplatesEnabledError: lambda e: (
        "No templates are enabled on this server. Members with Manage Server can allow them all "
        "again with `/memeconfig setting:allowed_templates value:all`."
    ),
    BannedWordError: lambda e: (
        f'{e.what} has a word I don\'t write ("{e.hidden}"). Try other words; members with Manage '
        "Server can switch the filter off with `/memeconfig setting:filter_enabled value:off`."
    ),
    SettingsUsageError: lambda e: (
        f"Pick a setting and give it a value, e.g. `/memeconfig setting:temperature value:0.9` "
        f"(or value:{RESET_WORDS[0]})."
    ),
    BadPeriodError: lambda e: "Pick a period for `/top`: week, month or all.",
    MemeNumberError: lambda e: (
        (f"“{_escape(e.given[:40])}” isn't a meme number. " if e.given else "Which meme? ")
        + "Pick one of yours in `/forget meme:`, or type its number from `/history`, e.g. `/forget meme:12`."
    ),
    NoSuchMemeError: lambda e: f"There's no meme #{e.meme_id}. `/history` lists yours with their numbers.",
}


class DiscordStartError(StartError):
    """The Discord bot could not start; the message says what to fix."""


def chat_context(interaction: discord.Interaction) -> ChatContext:
    """Who is asking, where: the chat is the channel; settings belong to the whole server."""
    user_id = str(interaction.user.id)
    channel_id = str(interaction.channel_id or interaction.user.id)
    if interaction.guild_id is None:  # a DM: its only member runs it
        return ChatContext(PLATFORM, channel_id, user_id, is_admin=True, is_private=True)
    # `permissions` are the member's own, resolved by Discord and sent with the interaction.
    # Checking them here matters: a server can let anyone *see* /memeconfig in its settings.
    return ChatContext(
        PLATFORM,
        channel_id,
        user_id,
        is_admin=interaction.permissions.manage_guild or interaction.permissions.administrator,
        scope_id=str(interaction.guild_id),
        user_name=interaction.user.display_name,  # the member's server nickname, if they set one
    )


class MemeButton(
    discord.ui.DynamicItem[discord.ui.Button], template=r"meme:(?P<action>up|down|again):(?P<id>[0-9]+)"
):
    """👍 n / 👎 n / 🔁 under a meme; the custom id carries the action and the meme id."""

    def __init__(self, action: str, meme_id: int, count: int | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.secondary,
                emoji=BUTTON_EMOJI[action],
                label=None if count is None else str(count),
                custom_id=f"meme:{action}:{meme_id}",
            )
        )
        self.action = action
        self.meme_id = meme_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> MemeButton:
        return cls(match["action"], int(match["id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        client = interaction.client
        assert isinstance(client, MemeClientHooks)
        await client.front_end.on_button(interaction, self.action, self.meme_id)


def meme_view(meme_id: int, score: Score) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(MemeButton("up", meme_id, score.up))
    view.add_item(MemeButton("down", meme_id, score.down))
    view.add_item(MemeButton("again", meme_id))
    return view


def meme_file(meme: MadeMeme) -> discord.File:
    # The caption doubles as alt text, so screen readers (and search) get the joke too.
    alt = meme.text[:1024] or meme.template.name
    return discord.File(
        io.BytesIO(meme.image.data), filename=f"meme-{meme.id}{meme.image.extension}", description=alt
    )


def is_picture(attachment: discord.Attachment) -> bool:
    kind = attachment.content_type or ""
    return kind.startswith("image/") or attachment.filename.lower().endswith(PICTURE_SUFFIXES)


async def fetch_picture(attachment: discord.Attachment) -> Picture:
    """An attachment's bytes; BadPictureError (worded) when it is too big or cannot be had."""
    if attachment.size > MAX_UPLOAD_BYTES:  # refused before downloading it
        raise BadPictureError(too_big(attachment.size))
    try:
        return Picture(await attachment.read())
    except (discord.HTTPException, aiohttp.ClientError) as exc:
        _log.info("could not download an attachment: %s", exc)
        raise BadPictureError("I couldn't download that picture from Discord: try again.") from None


def caption_text(content: str) -> str:
    """A message's text as a caption's start: its words, without links, mentions or emoji codes."""
    return " ".join(NOT_CAPTION.sub(" ", content).split())


def nothing_to_caption(content: str) -> str:
    """Why a message with no picture gives no caption, and what to pick instead."""
    if NOT_CAPTION.search(content):
        kind = "links" if "http" in content else "mentions"
        why = f"That message is only {kind}: there are no words to make a caption of."
    else:
        why = "That message has no text and no picture to make a meme of."
    return f"{why} Pick Make a meme on a message with words or an image."


def found_note(made: MadeMeme) -> str:
    """Say which template the bot recognised in a picture, and how to name it directly."""
    if made.found is not None and made.found.how == "recognized":
        return f"Recognised **{made.template.name}** (`/meme template:{made.template.slug}`)"
    if made.found is not None and made.found.how == "picked":
        others = ", ".join(f"`/meme template:{t.slug}`" for t in made.found.alternatives)
        return f"I picked **{made.template.name}** for your words" + (f"; or try {others}" if others else "")
    return ""


def templates_text(query: str, found: list[Template]) -> str:
    if not found:
        shown = discord.utils.escape_markdown(query[:100])
        return f"No template matches “{shown}”. Try a shorter word, or `/templates` to see them all."
    lines = [f"`{t.slug}` {t.name}" + ("" if t.has_data else " (own captions only)") for t in found]
    return _clip("\n".join(lines))


def history_text(memes: list[StoredMeme]) -> str:
    if not memes:
        return "You have not made any memes yet: try `/meme`."
    lines = []
    for m in memes:
        when = int(m.created_at.timestamp())
        caption = discord.utils.escape_markdown(" | ".join(b for b in m.boxes if b)) or "(no text)"
        lines.append(f"#{m.id} `{m.template}` {caption} · 👍 {m.up} 👎 {m.down} · <t:{when}:R>")
    return _clip("\n".join(lines))


def jump_link(interaction: discord.Interaction, entry: LeaderboardEntry) -> str | None:
    """The link that opens a meme's message; None where its channel is not known."""
    if entry.chat_id is None or entry.meme.message_id is None:
        return None
    return f"https://discord.com/channels/{interaction.guild_id or '@me'}/{entry.chat_id}/{entry.meme.message_id}"


def leaderboard_reply(interaction: discord.Interaction, board: Leaderboard) -> dict[str, Any]:
    """/top's message: an embed of the ranked memes with links to them, or a sentence."""
    where = "on this server" if interaction.guild_id else "here"
    if not board.entries:
        if board.period.days is None:
            return {"content": f"No memes {where} with more 👍 than 👎 yet. Vote under the ones you like!"}
        return {
            "content": f"No memes {where} from {board.period.label} with more 👍 than 👎 yet. "
            "Vote under the ones you like, or try `/top period:all`."
        }
    # No name is kept for memes made in DMs (the board there is the user's own) or before names were.
    nameless = "you" if interaction.guild_id is None else "someone"
    lines = []
    for entry in board.entries:
        meme = entry.meme
        text = entry.text
        if len(text) > MAX_LEADERBOARD_CAPTION:
            text = text[: MAX_LEADERBOARD_CAPTION - 1] + "…"
        link = jump_link(interaction, entry)
        number = f"[#{meme.id}]({link})" if link else f"#{meme.id}"
        lines.append(
            f"**{entry.rank}.** {_escape(text) or '(no text)'} — {_escape(entry.author) or nameless}"
            f" · **{meme.score.value:+d}** (👍 {meme.up} 👎 {meme.down}) · {number}"
        )
    title = f"🏆 Best memes {where}, {board.period.label}"
    embed = discord.Embed(title=title, description="\n".join(lines)[:4096])
    embed.set_footer(text="/top period: week, month or all · /forget deletes one of yours")
    return {"embed": embed}


def settings_text(settings: ChatSettings) -> str:
    return _clip("This server's settings:\n```\n" + format_settings(settings) + "\n```")


def _escape(text: str) -> str:
    return discord.utils.escape_markdown(text)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def client_options() -> dict[str, Any]:
    """The `guilds` intent alone: interactions need no other, and no privileged one. Captions
    are user text: an "@everyone" in one must never ping anybody."""
    return {"intents": discord.Intents(guilds=True), "allowed_mentions": discord.AllowedMentions.none()}


class MemeClientHooks:
    """What both clients below do on top of discord.py's: set up the front end, report errors."""

    front_end: DiscordFrontEnd

    async def setup_hook(self) -> None:
        await self.front_end.setup()

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        # An event handler failed: no interaction to answer, but one line with an id, not a
        # bare traceback, and the client keeps running.
        report_unexpected(_log, f"Discord event {event_method}", sys.exc_info()[1])


class MemeClient(MemeClientHooks, discord.Client):
    """One unsharded gateway connection ([discord] shard_count = 0)."""

    def __init__(self, front_end: DiscordFrontEnd) -> None:
        super().__init__(**client_options())
        self.front_end = front_end


class ShardedMemeClient(MemeClientHooks, discord.AutoShardedClient):
    """This process's shards of `shard_count`, one gateway connection each, in one client: the
    commands, buttons and service are shared, and discord.py routes each guild to its shard."""

    def __init__(self, front_end: DiscordFrontEnd, shard_count: int, shard_ids: list[int]) -> None:
        super().__init__(shard_count=shard_count, shard_ids=list(shard_ids) or None, **client_options())
        self.front_end = front_end


def make_client(front_end: DiscordFrontEnd, config: DiscordConfig) -> discord.Client:
    if config.shard_count:
        return ShardedMemeClient(front_end, config.shard_count, config.shard_ids)
    return MemeClient(front_end)


class DiscordFrontEnd:
    """The Discord bot on a MemeService. `await start()` logs in, syncs commands and connects."""

    def __init__(self, service: MemeService, config: DiscordConfig) -> None:
        self.service = service
        self.config = config
        self.client = make_client(self, config)
        self.tree = app_commands.CommandTree(self.client)
        self.tree.error(self.on_command_error)
        self._gateway: asyncio.Task[None] | None = None
        self._add_commands()

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Log in and sync the commands (errors raise DiscordStartError), then connect in the background."""
        if not self.config.token:
            raise DiscordStartError(
                "Discord is enabled but has no bot token: set DISCORD_TOKEN or [discord] token in the config"
            )
        try:
            await self.client.login(self.config.token)
        except discord.LoginFailure as exc:
            await self.client.close()
            raise DiscordStartError(
                "Discord rejected the bot token: check DISCORD_TOKEN / [discord] token"
            ) from exc
        except discord.HTTPException as exc:
            await self.client.close()
            where = f"test guild {self.config.test_guild}" if self.config.test_guild else "Discord"
            raise DiscordStartError(
                f"could not register the slash commands with {where} ({exc.status} {exc.text}): is the bot "
                "invited to that server with the applications.commands scope?"
            ) from exc
        except aiohttp.ClientError as exc:
            await self.client.close()
            raise DiscordStartError(f"cannot reach Discord: {exc}") from exc
        self._gateway = asyncio.create_task(self._run_gateway(), name="discord-gateway")

    async def _run_gateway(self) -> None:
        try:
            await self.client.connect(reconnect=True)
        except Exception:
            # discord.py reconnects by itself; reaching here means it gave up for good.
            _log.exception("Discord gateway connection ended")

    async def setup(self) -> None:
        """Runs once at login: register the buttons and sync the command tree."""
        self.client.add_dynamic_items(MemeButton)
        if self.config.test_guild:
            guild = discord.Object(id=self.config.test_guild)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        _log.info("Discord: synced %d commands", len(synced))

    async def close(self) -> None:
        await self.client.close()
        if self._gateway is not None:
            await self._gateway
            self._gateway = None

    # ---- commands -----------------------------------------------------------------------------

    def _add_commands(self) -> None:
        tree = self.tree

        async def template_choices(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            return [
                app_commands.Choice(name=t.name[:100], value=t.slug)
                for t in self.service.templates(current, limit=MAX_CHOICES)
            ]

        @tree.command(name="meme", description="Make a meme; the bot writes the caption")
        @app_commands.describe(
            template="Meme template (leave empty for a random one)",
            prefix="Start the caption yourself; | moves to the next box",
            method="How the caption is chosen",
            image="Your own picture to make the meme on, instead of a template",
        )
        @app_commands.choices(method=METHOD_CHOICES)
        @app_commands.autocomplete(template=template_choices)
        async def meme(
            interaction: discord.Interaction,
            template: str | None = None,
            prefix: str = "",
            method: str | None = None,
            image: discord.Attachment | None = None,
        ) -> None:
            ctx = chat_context(interaction)
            await interaction.response.defer(thinking=True)
            options = MemeOptions(method=method) if method else None

            async def make() -> MadeMeme:
                on = await fetch_picture(image) if image is not None else template
                return await self.service.make_meme(ctx, on, prefix, options)

            await self._send_meme(interaction, make())

        @tree.command(name="caption", description="Put your own caption on a template or picture")
        @app_commands.describe(
            text="The caption; separate the boxes with |",
            template="Meme template",
            image="Your own picture to put the caption on, instead of a template",
        )
        @app_commands.autocomplete(template=template_choices)
        async def caption(
            interaction: discord.Interaction,
            text: str,
            template: str | None = None,
            image: discord.Attachment | None = None,
        ) -> None:
            ctx = chat_context(interaction)
            await interaction.response.defer(thinking=True)
            boxes = [box.strip() for box in text.split("|")]

            async def make() -> MadeMeme:
                on = await fetch_picture(image) if image is not None else template or ""
                return await self.service.caption(ctx, on, boxes)

            await self._send_meme(interaction, make())

        @tree.context_menu(name=MAKE_A_MEME)
        async def make_a_meme(interaction: discord.Interaction, message: discord.Message) -> None:
            await self.on_make_a_meme(interaction, message)

        @tree.command(name="templates", description="Find a meme template")
        @app_commands.describe(query="Part of a template's name; leave empty to list them")
        async def templates(interaction: discord.Interaction, query: str = "") -> None:
            found = self.service.templates(query, limit=MAX_CHOICES)
            await interaction.response.send_message(templates_text(query, found), ephemeral=True)

        @tree.command(name="history", description="Your recent memes")
        async def history(interaction: discord.Interaction) -> None:
            memes = await self.service.history(chat_context(interaction))
            await interaction.response.send_message(history_text(memes), ephemeral=True)

        @tree.command(name="top", description="This server's best memes, by 👍 minus 👎")
        @app_commands.describe(period="How far back to look (default: the last 7 days)")
        @app_commands.choices(period=PERIOD_CHOICES)
        async def top(interaction: discord.Interaction, period: str = PERIODS[0].name) -> None:
            await self.on_top(interaction, period)

        async def own_memes(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            typed = current.strip().removeprefix("#").lower()
            choices = []
            for meme in await self.service.history(chat_context(interaction), MAX_CHOICES):
                label = f"#{meme.id} {meme.template}: {' | '.join(b for b in meme.boxes if b) or '(no text)'}"
                if typed in label.lower():
                    choices.append(app_commands.Choice(name=label[:100], value=str(meme.id)))
            return choices

        @tree.command(name="forget", description="Delete one of your memes from history, /top and exports")
        @app_commands.describe(meme="Which of your memes (its number from /history)")
        @app_commands.autocomplete(meme=own_memes)
        async def forget(interaction: discord.Interaction, meme: str) -> None:
            await self.on_forget(interaction, meme)

        async def value_choices(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            # The values the chosen setting takes whole (a method, on/off), and the reset word;
            # numbers and template lists are typed.
            spec = find_setting(str(interaction.namespace.setting or ""))
            if spec is None:
                return []
            words = (*spec.kind.suggestions, *spec.kind.reset_words, RESET_WORDS[0])
            typed = current.strip().lower()
            return [app_commands.Choice(name=w, value=w) for w in words if w.startswith(typed)][:MAX_CHOICES]

        @tree.command(name="memeconfig", description="Show or change this server's meme settings")
        @app_commands.describe(
            setting="The setting to change (leave empty to see them)",
            value=f"Its new value, or {RESET_WORDS[0]}",
        )
        @app_commands.choices(setting=SETTING_CHOICES)
        @app_commands.autocomplete(value=value_choices)
        @app_commands.default_permissions(manage_guild=True)
        @app_commands.guild_only()
        async def memeconfig(
            interaction: discord.Interaction, setting: str | None = None, value: str = ""
        ) -> None:
            ctx = chat_context(interaction)
            try:
                if setting is None:
                    current = await self.service.get_settings(ctx)
                else:
                    current = await self.service.set_settings(ctx, {setting: value})
            except MemeError as exc:
                await interaction.response.send_message(error_text(exc, WORDING), ephemeral=True)
                return
            await interaction.response.send_message(settings_text(current), ephemeral=True)

        @tree.command(name="help", description="What memebot can do")
        async def help_(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(HELP_TEXT, ephemeral=True)

    # ---- replies ------------------------------------------------------------------------------

    async def on_make_a_meme(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """A message's context menu: its picture (with its text as the caption's start), posted
        in the channel with credit to its author."""
        picture = next((a for a in message.attachments if is_picture(a)), None)
        prefix = caption_text(message.content)
        if picture is None and not prefix:  # nothing to caption: say what the message lacks
            await interaction.response.send_message(nothing_to_caption(message.content), ephemeral=True)
            return
        ctx = chat_context(interaction)
        await interaction.response.defer(thinking=True)

        async def make() -> MadeMeme:
            # A picture is the template; text alone is the caption's start, the template picked for it.
            on = await fetch_picture(picture) if picture is not None else None
            return await self.service.make_meme(ctx, on, prefix)

        await self._send_meme(interaction, make(), credit=f"From {message.author.mention}'s message")

    async def _send_meme(
        self, interaction: discord.Interaction, making: Awaitable[MadeMeme], credit: str = ""
    ) -> None:
        """Finish a deferred interaction with the meme, or with the error only the user sees."""
        try:
            made = await making
        except MemeError as exc:
            await self._reply_error(interaction, error_text(exc, WORDING))
            return
        lines = [
            credit,
            found_note(made),
            missing_note(made.image.missing),
        ]  # missing: no font here draws them
        content = "\n".join(line for line in lines if line)
        message = await interaction.followup.send(
            **({"content": content} if content else {}),
            file=meme_file(made),
            view=meme_view(made.id, made.score),
            allowed_mentions=discord.AllowedMentions.none(),  # credit names the author; no ping
            wait=True,
        )
        # Nothing to keep for showing it again: /top links to the message (server, channel and
        # message ids are stored), and attachment URLs are signed and expire within a day.
        await self.service.attach_message(made.id, str(message.id))

    async def on_top(self, interaction: discord.Interaction, period: str) -> None:
        """The best memes of the server (of the DM, in a DM), public, with links to their messages."""
        ctx = chat_context(interaction)
        await interaction.response.defer(thinking=True)  # checking the messages takes a moment
        try:
            board = await self.service.leaderboard(ctx, period)
        except MemeError as exc:
            await self._reply_error(interaction, error_text(exc, WORDING))
            return
        for _ in range(DELETED_CHECK_ROUNDS):
            shown = await asyncio.gather(*(self._still_posted(entry) for entry in board.entries))
            gone = [entry.meme.id for entry, posted in zip(board.entries, shown, strict=True) if not posted]
            if not gone:
                break
            for meme_id in gone:  # a moderator took it down: it leaves the board, and the next one moves up
                await self.service.message_deleted(meme_id)
            board = await self.service.leaderboard(ctx, board.period)
        await interaction.followup.send(
            **leaderboard_reply(interaction, board), allowed_mentions=discord.AllowedMentions.none()
        )

    async def _still_posted(self, entry: LeaderboardEntry) -> bool:
        """False only when Discord says the meme's message is gone; anything else (no access to
        its channel, Discord failing) leaves the meme listed."""
        channel, message = entry.chat_id, entry.meme.message_id
        if channel is None or message is None or not (channel.isdigit() and message.isdigit()):
            return True
        try:
            await self.client.get_partial_messageable(int(channel)).fetch_message(int(message))
        except discord.NotFound:
            return False
        except discord.HTTPException as exc:
            _log.info("could not check a leaderboard meme's message: %s", exc)
        return True

    async def on_forget(self, interaction: discord.Interaction, meme: str) -> None:
        """Delete one of the user's own memes (and its message); only they see the answer."""
        ctx = chat_context(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            forgotten = await self.service.forget(ctx, meme_number(meme))
        except MemeError as exc:
            await interaction.followup.send(error_text(exc, WORDING), ephemeral=True)
            return
        text = f"Forgotten: meme #{forgotten.id} is gone from `/history`, `/top` and exports, votes and all."
        if not await self._take_down(forgotten):
            text += " I couldn't delete its message: members with Manage Messages can."
        await interaction.followup.send(text, ephemeral=True)

    async def _take_down(self, forgotten: ForgottenMeme) -> bool:
        """Delete a forgotten meme's message (the bot's own: no permission needed); False when it stays up."""
        channel, message = forgotten.chat_id, forgotten.message_id
        if channel is None or message is None or not (channel.isdigit() and message.isdigit()):
            return True  # no message of it that we know of
        try:
            await self.client.get_partial_messageable(int(channel)).get_partial_message(int(message)).delete()
        except discord.NotFound:
            return True  # deleted already
        except discord.HTTPException as exc:
            _log.info("could not delete a forgotten meme's message: %s", exc)
            return False
        return True

    async def _reply_error(self, interaction: discord.Interaction, text: str) -> None:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True)
            return
        # After a public defer the first follow-up would fill in the public "thinking" message
        # whatever its own flags say; removing that message first lets the error be ephemeral.
        await interaction.delete_original_response()
        await interaction.followup.send(text, ephemeral=True)

    async def on_button(self, interaction: discord.Interaction, action: str, meme_id: int) -> None:
        # discord.py only logs a failing button callback; the presser would see "interaction
        # failed" with no word from us. So buttons get the same treatment as commands.
        try:
            await self._press(interaction, action, meme_id)
        except Exception as exc:
            await self._fail(interaction, report_unexpected(_log, f"Discord button {action}", exc))

    async def _press(self, interaction: discord.Interaction, action: str, meme_id: int) -> None:
        ctx = chat_context(interaction)
        if action == "again":
            await interaction.response.defer(thinking=True)
            await self._send_meme(interaction, self.service.reroll(ctx, meme_id))
            return
        try:
            score = await self.service.rate(ctx, meme_id, 1 if action == "up" else -1)
        except MemeError as exc:
            await interaction.response.send_message(error_text(exc, WORDING), ephemeral=True)
            return
        await interaction.response.edit_message(view=meme_view(meme_id, score))

    async def on_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        name = interaction.command.name if interaction.command else "?"
        await self._fail(interaction, report_unexpected(_log, f"Discord command /{name}", error))

    async def _fail(self, interaction: discord.Interaction, text: str) -> None:
        try:
            await self._reply_error(interaction, text)
        except discord.HTTPException:
            pass  # the interaction may have expired; the log has the cause
