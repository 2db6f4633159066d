"""The Discord bot end to end: the real discord.py client against a fake Discord on 127.0.0.1.

Every test drives the real DiscordFrontEnd on a real MemeService (catalog, renderer, SQLite
storage, model pool); only the caption model is a small deterministic stand-in, and Discord
itself is fakes/discord_server.py. The fake acts as the Discord users.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import discord
import pytest
import yarl
from PIL import Image

from bot.app import run_bot
from bot.discord_app import DiscordFrontEnd, DiscordStartError
from bot.export import export_memes
from bot.service import MemeService
from bot.settings import SETTINGS
from bot.storage import Score, Storage, StoredMeme
from common.catalog import Catalog, load_catalog
from common.config import Config, DiscordConfig, RenderConfig
from fakes.caption_model import ScriptedCaptions, config_for_tests, scripted_service
from fakes.discord_server import (
    DEFERRED_CHANNEL_MESSAGE,
    MANAGE_GUILD,
    MESSAGE_COMMAND,
    UPDATE_MESSAGE,
    FakeDiscord,
    FakeInteraction,
    FakeMessage,
    FakeUser,
    Upload,
)
from fakes.telegram_server import FakeTelegramServer
from model.requests import DECODING_METHODS, METHODS

pytestmark = pytest.mark.timeout(30)

TOKEN = "fake-bot-token"
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | (1 << 15)  # members, presences, message content
ALICE = FakeUser(11, "alice")
BOB = FakeUser(12, "bob")
ADMIN = FakeUser(13, "admin", permissions=MANAGE_GUILD)


@dataclass
class Bot:
    """One running bot process, as far as the tests care: its front end on a real service."""

    front_end: DiscordFrontEnd
    service: MemeService
    model: ScriptedCaptions
    resources: AsyncExitStack

    @property
    def storage(self) -> Storage:
        return self.service.storage

    async def close(self) -> None:
        await self.resources.aclose()


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """The fake Discord, with discord.py configured to use it (restored after the test)."""
    server = FakeDiscord(TOKEN)
    await server.start()
    monkeypatch.setattr(discord.http.Route, "BASE", server.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(server.gateway_url))
    yield server
    await server.close()
    assert not server.unhandled, f"the bot called routes the fake does not serve: {server.unhandled}"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = config_for_tests(tmp_path)
    return replace(
        config,
        render=RenderConfig(max_side=320),  # small images: the tests are about Discord
        discord=DiscordConfig(enabled=True, token=TOKEN),
    )


@pytest.fixture
def catalog(config: Config) -> Catalog:
    return load_catalog(config.catalog_path)


@pytest.fixture
async def start_bot(fake: FakeDiscord, config: Config) -> AsyncIterator[Callable[..., Awaitable[Bot]]]:
    """Starts a bot on the fake; close it and call again to simulate a restart."""
    bots: list[Bot] = []

    async def start(discord_config: DiscordConfig | None = None) -> Bot:
        resources = AsyncExitStack()
        model = ScriptedCaptions()
        service = await resources.enter_async_context(scripted_service(config, model, batch_wait_ms=0))
        front_end = DiscordFrontEnd(service, discord_config or config.discord)
        resources.push_async_callback(front_end.close)
        bot = Bot(front_end, service, model, resources)
        bots.append(bot)
        await front_end.start()
        await fake.wait_connected(sessions=len(bots))
        return bot

    yield start
    for bot in bots:
        await bot.close()


async def final_message(fake: FakeDiscord, interaction: FakeInteraction) -> FakeMessage:
    """The message the interaction ends with, once the bot has finished answering."""
    await fake.wait_until(lambda: interaction.messages and not interaction.messages[-1].loading)
    return interaction.messages[-1]


async def stored_meme(fake: FakeDiscord, bot: Bot, message: FakeMessage) -> StoredMeme:
    """The database row of the meme a message shows, once the bot has linked the two."""
    for _ in range(100):
        with sqlite3.connect(bot.service.config.database_path) as db:  # a second reader, as `memebot db` is
            row = db.execute(
                "SELECT id FROM memes WHERE platform = 'discord' AND chat_id = ? AND message_id = ?",
                (str(fake.channel_id), str(message.id)),
            ).fetchone()
        if row is not None:
            return await bot.storage.get_meme(row[0])
        await asyncio.sleep(0.02)  # the link is written just after the message is posted
    raise AssertionError(f"no meme in the database is linked to message {message.id}")


def image_size(message: FakeMessage) -> tuple[int, int]:
    """The attached meme's size; its file name must say its real format, or Discord won't show it."""
    (attachment,) = message.attachments
    with Image.open(io.BytesIO(attachment.data)) as image:
        suffix = {"JPEG": ".jpg", "PNG": ".png"}[image.format or ""]
        assert attachment.filename.endswith(suffix) and attachment.filename.count(".") == 1
        return image.size


# ---- start-up ---------------------------------------------------------------------------------


async def test_start_up_syncs_every_command_with_no_privileged_intents(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    synced = {c["name"]: c for c in fake.commands[None]}
    assert set(synced) == {
        "meme",
        "caption",
        "templates",
        "history",
        "top",
        "forget",
        "memeconfig",
        "help",
        "Make a meme",
    }
    assert synced["Make a meme"]["type"] == MESSAGE_COMMAND  # in a message's context menu
    assert fake.identify is not None and fake.identify["intents"] & PRIVILEGED_INTENTS == 0
    meme_options = {o["name"]: o for o in synced["meme"]["options"]}
    assert meme_options["template"].get("autocomplete") is True
    # The decoding methods and the settings, each from its one table.
    assert [c["value"] for c in meme_options["method"]["choices"]] == list(METHODS)
    assert meme_options["method"]["choices"][0]["name"] == f"{METHODS[0]}: {DECODING_METHODS[0].help}"
    config_options = {o["name"]: o for o in synced["memeconfig"]["options"]}
    assert [c["value"] for c in config_options["setting"]["choices"]] == [s.name for s in SETTINGS]
    assert all(len(c["name"]) <= 100 for c in config_options["setting"]["choices"])
    assert config_options["value"].get("autocomplete") is True
    # Hidden from members without Manage Server, and not offered in DMs.
    assert int(synced["memeconfig"]["default_member_permissions"]) == MANAGE_GUILD
    assert synced["memeconfig"]["contexts"] == [0]  # guild only
    assert "memeconfig" not in fake.visible_commands(ALICE)
    assert "memeconfig" in fake.visible_commands(ADMIN)


async def test_test_guild_gets_the_commands_directly(fake: FakeDiscord, start_bot) -> None:
    await start_bot(DiscordConfig(enabled=True, token=TOKEN, test_guild=fake.guild_id))
    assert {c["name"] for c in fake.commands[fake.guild_id]} >= {"meme", "memeconfig"}
    assert None not in fake.commands  # nothing synced globally: global updates take up to an hour


async def test_a_missing_or_wrong_token_is_a_clear_start_error(fake: FakeDiscord, start_bot) -> None:
    with pytest.raises(DiscordStartError, match="rejected the bot token"):
        await start_bot(DiscordConfig(enabled=True, token="not-the-token"))
    with pytest.raises(DiscordStartError, match="DISCORD_TOKEN"):
        await start_bot(DiscordConfig(enabled=True, token=""))
    assert fake.sessions == 0


# ---- sharding -------------------------------------------------------------------------------------

SHARD_0_GUILD = 4200  # (guild_id >> 22) % 2 == 0: Discord sends its events on shard 0 of 2
SHARD_1_GUILD = (1 << 22) | 4200  # ... and this one's on shard 1 of 2


async def test_a_process_given_shard_1_of_2_identifies_as_it_and_serves_that_shards_guilds(
    fake: FakeDiscord, start_bot, config: Config
) -> None:
    await start_bot(replace(config.discord, shard_count=2, shard_ids=[1]))
    assert [i["shard"] for i in fake.identifies] == [[1, 2]]  # one connection: its own shard
    fake.guild_id = SHARD_1_GUILD
    message = await final_message(fake, await fake.run_command("meme", ALICE, template="drake"))
    assert message.attachments and message.button_texts() == ["👍 0", "👎 0", "🔁"]
    press = await fake.press_button(message, message.buttons[0]["custom_id"], BOB)
    await fake.wait_until(lambda: press.acknowledged)
    assert message.button_texts() == ["👍 1", "👎 0", "🔁"]
    # Shard 0's guilds are another process's: nothing of theirs reaches this one.
    fake.guild_id = SHARD_0_GUILD
    with pytest.raises(AssertionError, match="shard 0 of 2"):
        await fake.run_command("meme", ALICE, template="drake")


async def test_two_processes_split_the_shards_and_each_serves_its_own_guilds(
    fake: FakeDiscord, start_bot, config: Config
) -> None:
    zero = await start_bot(replace(config.discord, shard_count=2, shard_ids=[0]))
    one = await start_bot(replace(config.discord, shard_count=2, shard_ids=[1]))
    assert sorted(i["shard"] for i in fake.identifies) == [[0, 2], [1, 2]]
    for guild, bot, other in ((SHARD_0_GUILD, zero, one), (SHARD_1_GUILD, one, zero)):
        fake.guild_id = guild
        before = len(other.model.requests)
        message = await final_message(
            fake, await fake.run_command("meme", ALICE, template="drake", prefix=f"guild {guild}")
        )
        assert message.attachments
        assert bot.model.last.prefix == f"guild {guild}" and len(other.model.requests) == before


async def test_one_process_may_run_every_shard(fake: FakeDiscord, start_bot, config: Config) -> None:
    await start_bot(replace(config.discord, shard_count=2))  # no shard_ids: all of them, here
    await fake.wait_until(lambda: len(fake.identifies) == 2)
    assert sorted(i["shard"] for i in fake.identifies) == [[0, 2], [1, 2]]
    for guild in (SHARD_0_GUILD, SHARD_1_GUILD):
        fake.guild_id = guild
        message = await final_message(
            fake, await fake.run_command("caption", ALICE, template="drake", text="a | b")
        )
        assert message.attachments


# ---- /meme --------------------------------------------------------------------------------------


async def test_meme_is_deferred_then_posted_as_an_image_with_three_buttons(
    fake: FakeDiscord, start_bot, catalog: Catalog
) -> None:
    bot = await start_bot()
    interaction = await fake.run_command(
        "meme", ALICE, template="drake", prefix="writing tests", method="greedy"
    )
    message = await final_message(fake, interaction)

    assert interaction.callbacks[0]["type"] == DEFERRED_CHANNEL_MESSAGE  # acknowledged before generating
    assert len(interaction.callbacks) == 1 and not message.ephemeral
    assert max(image_size(message)) == 320
    assert message.attachments[0].description == "writing tests with extra cheese | box 2"  # alt text
    assert message.button_texts() == ["👍 0", "👎 0", "🔁"]

    stored = await stored_meme(fake, bot, message)
    assert stored.template == catalog.lookup("drake").slug
    assert stored.boxes == ["writing tests with extra cheese", "box 2"]
    assert bot.model.last.method == "greedy" and bot.model.last.template == "Drake-Hotline-Bling"
    assert [b["custom_id"] for b in message.buttons] == [
        f"meme:{a}:{stored.id}" for a in ("up", "down", "again")
    ]


async def test_autocomplete_offers_matching_templates_even_with_typos(
    fake: FakeDiscord, start_bot, catalog: Catalog
) -> None:
    await start_bot()
    choices = await fake.autocomplete("meme", ALICE, focused="template", template="chnage my mind")
    assert choices[0] == {"name": "Change My Mind", "value": catalog.lookup("change my mind").slug}
    every = await fake.autocomplete("caption", ALICE, focused="template", template="")
    assert len(every) == 25  # Discord's maximum; the catalog has more
    assert len({c["value"] for c in every}) == 25


async def test_unknown_template_is_an_ephemeral_error_with_suggestions(
    fake: FakeDiscord, start_bot, catalog: Catalog
) -> None:
    await start_bot()
    interaction = await fake.run_command("meme", ALICE, template="flying spaghetti monster")
    reply = await final_message(fake, interaction)
    assert reply.ephemeral and not reply.attachments
    assert interaction.original is not None and interaction.original.deleted  # no public "thinking" left
    suggestions = catalog.suggestions("flying spaghetti monster")
    assert len(suggestions) == 3
    assert all(t.slug in reply.content for t in suggestions)


async def test_caption_renders_the_given_text(fake: FakeDiscord, start_bot) -> None:
    bot = await start_bot()
    interaction = await fake.run_command("caption", ALICE, template="drake", text="no thanks | yes please")
    message = await final_message(fake, interaction)
    assert message.attachments[0].description == "no thanks | yes please"
    assert message.button_texts() == ["👍 0", "👎 0", "🔁"]
    assert (await stored_meme(fake, bot, message)).boxes == ["no thanks", "yes please"]


async def test_characters_no_font_has_are_named_with_the_meme(fake: FakeDiscord, start_bot) -> None:
    bot = await start_bot()
    interaction = await fake.run_command("caption", ALICE, template="drake", text="\U0001e290 | ok")
    message = await final_message(fake, interaction)
    assert message.attachments and message.button_texts() == ["👍 0", "👎 0", "🔁"]
    if bot.service.renderer.fonts.font_for("\U0001e290") is None:
        assert message.content.startswith("Couldn't draw \U0001e290 (U+1E290)")
    interaction = await fake.run_command("caption", ALICE, template="drake", text="a | b | c")
    reply = await final_message(fake, interaction)
    assert reply.ephemeral and "has 2 text boxes, and you gave 3" in reply.content


async def test_templates_history_and_help_answer_only_the_asker(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    await final_message(fake, await fake.run_command("meme", ALICE, template="two buttons"))
    replies = {}
    for name, options in (("templates", {"query": "buttons"}), ("history", {}), ("help", {})):
        interaction = await fake.run_command(name, ALICE, **options)
        await fake.wait_until(lambda i=interaction: i.acknowledged)
        (replies[name],) = interaction.messages
    assert all(r.ephemeral for r in replies.values())
    assert "two-buttons" in replies["templates"].content
    assert "two-buttons" in replies["history"].content and "👍 0" in replies["history"].content
    assert "/meme" in replies["help"].content


# ---- buttons ----------------------------------------------------------------------------------


async def test_buttons_on_a_message_from_before_a_restart_still_work(fake: FakeDiscord, start_bot) -> None:
    first = await start_bot()
    message = await final_message(fake, await fake.run_command("meme", ALICE, template="drake"))
    up, down, again = (b["custom_id"] for b in message.buttons)
    meme_id = int(up.rsplit(":", 1)[1])
    await first.close()

    second = await start_bot()  # a new process: nothing in memory but the database
    press = await fake.press_button(message, up, BOB)
    await fake.wait_until(lambda: press.acknowledged)
    assert press.callbacks[0]["type"] == UPDATE_MESSAGE  # the counts change in place
    assert message.button_texts() == ["👍 1", "👎 0", "🔁"]
    assert await second.storage.score(meme_id) == Score(up=1, down=0)

    for user, custom_id in ((ALICE, down), (BOB, up)):  # a vote, and a withdrawn vote
        press = await fake.press_button(message, custom_id, user)
        await fake.wait_until(lambda p=press: p.acknowledged)
    assert message.button_texts() == ["👍 0", "👎 1", "🔁"]
    assert await second.storage.score(meme_id) == Score(up=0, down=1)

    reroll = await fake.press_button(message, again, BOB)
    new = await final_message(fake, reroll)
    assert new.id != message.id and not new.ephemeral and new.button_texts() == ["👍 0", "👎 0", "🔁"]
    assert (await stored_meme(fake, second, new)).template == (
        await stored_meme(fake, second, message)
    ).template


async def test_memes_votes_and_rerolls_work_in_direct_messages(fake: FakeDiscord, start_bot) -> None:
    """A DM with the bot has no server: no member, no guild id, the user's own settings."""
    bot = await start_bot()
    interaction = await fake.run_command("meme", ALICE, dm=True, template="drake", prefix="dm life")
    message = await final_message(fake, interaction)
    assert not message.ephemeral and message.attachments
    up, _, again = (b["custom_id"] for b in message.buttons)
    meme_id = int(up.rsplit(":", 1)[1])
    stored = await bot.storage.get_meme(meme_id)
    assert stored is not None and stored.boxes[0].startswith("dm life")
    # A DM's chat identifies the user: like the user id, it is stored only as a keyed hash.
    assert stored.chat_id != str(fake.dm_channel_id) and len(stored.chat_id) == 32

    press = await fake.press_button(message, up, ALICE, dm=True)
    await fake.wait_until(lambda: press.acknowledged)
    assert message.button_texts() == ["👍 1", "👎 0", "🔁"]
    assert await bot.storage.score(meme_id) == Score(up=1, down=0)
    new = await final_message(fake, await fake.press_button(message, again, ALICE, dm=True))
    assert new.id != message.id and new.attachments

    # Server settings make no sense in a DM: Discord does not offer /memeconfig there.
    with pytest.raises(AssertionError, match="not offered in direct messages"):
        await fake.run_command("memeconfig", ALICE, dm=True, setting="cooldown_s", value="60")


# ---- settings ---------------------------------------------------------------------------------


async def test_only_manage_server_members_change_settings(fake: FakeDiscord, start_bot) -> None:
    bot = await start_bot()
    server = str(fake.guild_id)
    # A server can let everyone *see* /memeconfig; the bot still checks the member's permissions.
    refused = await fake.run_command("memeconfig", ALICE, setting="cooldown_s", value="60")
    await fake.wait_until(lambda: refused.acknowledged)
    (reply,) = refused.messages
    assert reply.ephemeral and "Only members with Manage Server can change" in reply.content
    assert "admins" not in reply.content  # Telegram's word, not Discord's
    assert "cooldown_s" not in await bot.storage.get_settings("discord", server)

    allowed = await fake.run_command("memeconfig", ADMIN, setting="cooldown_s", value="60")
    await fake.wait_until(lambda: allowed.acknowledged)
    assert allowed.messages[0].ephemeral and "cooldown_s: 60" in allowed.messages[0].content
    assert (await bot.storage.get_settings("discord", server))["cooldown_s"] == 60

    # The setting is the server's: it applies in this channel's next memes.
    await final_message(fake, await fake.run_command("meme", ALICE, template="drake"))
    reply = await final_message(fake, await fake.run_command("meme", ALICE, template="drake"))
    assert reply.ephemeral and "Slow down" in reply.content and not reply.attachments


async def test_refusals_and_hints_name_manage_server_and_discords_options(
    fake: FakeDiscord, start_bot
) -> None:
    """The service says what is wrong; Discord's words say how to fix it on Discord: named
    options, and members with Manage Server (not Telegram's "/caption drake ..." or admins)."""
    await start_bot()

    async def reply_to(user: FakeUser, command: str, **options: str) -> str:
        interaction = await fake.run_command(command, user, **options)
        message = await final_message(fake, interaction)
        assert message.ephemeral and not message.attachments
        return message.content

    saved = await reply_to(ADMIN, "memeconfig", setting="allowed_templates", value="drake, change my mind")
    assert "allowed_templates: drake-hotline-bling, change-my-mind" in saved
    refused = await reply_to(ALICE, "meme", template="two buttons")
    assert "Two Buttons isn't enabled on this server" in refused
    assert "Manage Server" in refused and "`/memeconfig setting:allowed_templates`" in refused

    banned = await reply_to(ALICE, "caption", template="drake", text="no | fuck yes")
    assert 'has a word I don\'t write ("f***")' in banned
    assert "Manage Server" in banned and "`/memeconfig setting:filter_enabled value:off`" in banned

    empty = await reply_to(ALICE, "caption", template="drake", text="   ")
    assert empty == "Give me some text, e.g. `/caption template:drake text:no thanks | yes please`"
    no_template = await reply_to(ALICE, "caption", template=" ", text="no thanks | yes please")
    assert "`/caption template:drake text:no thanks | yes please`" in no_template

    # Values are checked by the settings table, whoever types them.
    bad = await reply_to(ADMIN, "memeconfig", setting="temperature", value="hot")
    assert bad == "temperature must be a number from 0.1 to 2 (got 'hot')."
    assert "Give best_of a value: 1 to 16, or default." == await reply_to(
        ADMIN, "memeconfig", setting="best_of", value=""
    )
    assert "admins" not in refused + banned + empty + no_template


async def test_memeconfig_offers_the_values_each_setting_takes(fake: FakeDiscord, start_bot) -> None:
    await start_bot()

    async def offered(setting: str, typed: str = "") -> list[str]:
        choices = await fake.autocomplete("memeconfig", ADMIN, focused="value", setting=setting, value=typed)
        return [c["value"] for c in choices]

    assert await offered("method") == [*METHODS, "default"]
    assert await offered("filter_enabled", "o") == ["on", "off"]
    assert await offered("allowed_templates") == ["all", "default"]
    assert await offered("temperature") == ["default"]  # numbers are typed


# ---- rate limits ------------------------------------------------------------------------------


async def test_a_rate_limited_command_sync_is_retried_after_retry_after(fake: FakeDiscord, start_bot) -> None:
    fake.rate_limit("PUT", r"/applications/\d+/commands", retry_after=0.3)
    await start_bot()
    attempts = [r for r in fake.requests if r.method == "PUT"]
    assert [r.status for r in attempts] == [429, 200]
    assert attempts[1].at - attempts[0].at >= 0.3
    assert len(fake.commands[None]) == 9  # eight slash commands and the message command


async def test_a_rate_limited_follow_up_is_retried_after_retry_after(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    fake.rate_limit("POST", r"/webhooks/\d+/[^/]+", retry_after=0.5)
    started = time.monotonic()
    message = await final_message(fake, await fake.run_command("meme", ALICE, template="drake"))
    attempts = [r for r in fake.requests if r.method == "POST" and r.path.startswith("/api/v10/webhooks/")]
    assert [r.status for r in attempts] == [429, 200]
    assert attempts[1].at - attempts[0].at >= 0.5
    assert message.attachments and time.monotonic() - started < 5


# ---- one process, both platforms ----------------------------------------------------------------


async def test_run_bot_serves_discord_and_telegram_side_by_side(fake: FakeDiscord, config: Config) -> None:
    """`memebot run` with both front ends configured: one process, one database, both answering.

    No model is installed here, so both use /caption, which needs none."""
    async with FakeTelegramServer() as telegram:
        config = replace(
            config,
            telegram=telegram.bot_config(),
        )
        stop = asyncio.Event()
        running = asyncio.create_task(run_bot(config, stop))
        await fake.wait_connected()

        on_discord = await fake.run_command("caption", ALICE, template="drake", text="discord | yes")
        telegram.send_text("/caption drake telegram | yes", chat_id=-100)
        message = await final_message(fake, on_discord)
        (photo,) = await telegram.wait_for("sendPhoto")
        assert message.attachments and message.button_texts() == ["👍 0", "👎 0", "🔁"]
        assert photo.chat_id == -100

        # One service, one error; each platform says how to write a caption in its own syntax.
        no_model = await final_message(fake, await fake.run_command("meme", ALICE, template="drake"))
        telegram.send_text("/meme drake", chat_id=-100)
        (told,) = await telegram.wait_for("sendMessage")
        assert "caption model isn't installed" in no_model.content
        assert "`/caption template:drake text:no thanks | yes please`" in no_model.content
        assert "caption model isn't installed" in told.params["text"]
        assert "/caption drake no thanks | yes please" in told.params["text"]
        assert "template:" not in told.params["text"]

        stop.set()
        await asyncio.wait_for(running, timeout=10)  # a clean stop: run_bot returns

    storage = await Storage.open(config.database_path, config.storage.user_hash_key)
    try:
        assert {(await storage.get_meme(i)).platform for i in (1, 2)} == {"discord", "telegram"}
    finally:
        await storage.close()


# ---- your own picture -----------------------------------------------------------------------------


def picture_bytes(size: tuple[int, int] = (400, 300), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 80, 40)).save(buffer, fmt)
    return buffer.getvalue()


async def test_meme_and_caption_take_an_image_attachment(fake: FakeDiscord, start_bot) -> None:
    bot = await start_bot()
    interaction = await fake.run_command(
        "meme", ALICE, prefix="when the build", method="greedy", image=Upload(picture_bytes((400, 300)))
    )
    message = await final_message(fake, interaction)
    assert not message.ephemeral and message.button_texts() == ["👍 0", "👎 0", "🔁"]
    assert image_size(message) == (320, 240)  # the picture itself, at the configured max side
    stored = await stored_meme(fake, bot, message)
    assert stored.template.startswith("upload:") and stored.boxes[0] == "when the build with extra cheese"
    assert bot.model.last.template == ""  # written for "any picture", not for a template

    caption = await fake.run_command(
        "caption", BOB, text="top | bottom", image=Upload(picture_bytes((300, 300)))
    )
    message = await final_message(fake, caption)
    assert message.attachments[0].description == "top | bottom" and image_size(message) == (300, 300)


async def test_context_menu_make_a_meme_on_a_messages_picture_credits_its_author(
    fake: FakeDiscord, start_bot
) -> None:
    bot = await start_bot()
    post = fake.post_message(
        BOB, "my cat at 3am", uploads=(Upload(picture_bytes((500, 400), "JPEG"), "cat.jpg", "image/jpeg"),)
    )
    interaction = await fake.run_message_command("Make a meme", ALICE, post)
    message = await final_message(fake, interaction)
    assert not message.ephemeral and f"<@{BOB.id}>" in message.content  # credit, without a ping
    stored = await stored_meme(fake, bot, message)
    assert stored.prefix == "my cat at 3am" and stored.user_hash == bot.storage.user_hash(
        "discord", str(ALICE.id)
    )


async def test_context_menu_make_a_meme_on_a_messages_words_picks_a_template_for_them(
    fake: FakeDiscord, start_bot
) -> None:
    bot = await start_bot()
    post = fake.post_message(BOB, "<@12> when the deploy works on friday https://example.com/x")
    message = await final_message(fake, await fake.run_message_command("Make a meme", ALICE, post))
    assert not message.ephemeral and message.content.startswith(f"From <@{BOB.id}>'s message")
    assert "I picked **" in message.content and "or try `/meme template:" in message.content
    stored = await stored_meme(fake, bot, message)
    assert stored.prefix == "when the deploy works on friday"  # no mention, no link in the caption
    assert bot.model.scorings[-1].text == "when the deploy works on friday"

    for content, why in (
        ("", "no text and no picture"),
        ("https://example.com/a https://example.com/b", "only links"),
        ("<@12> <@&99> @everyone", "only mentions"),
    ):
        refusal = await final_message(
            fake, await fake.run_message_command("Make a meme", ALICE, fake.post_message(BOB, content))
        )
        assert refusal.ephemeral and why in refusal.content, refusal.content
    long = fake.post_message(BOB, "word " * 200)
    refusal = await final_message(fake, await fake.run_message_command("Make a meme", ALICE, long))
    assert refusal.ephemeral and "too long" in refusal.content


async def test_an_image_that_cannot_be_a_meme_is_refused_only_to_the_user(
    fake: FakeDiscord, start_bot
) -> None:
    await start_bot()
    broken = await fake.run_command("meme", ALICE, image=Upload(b"not a picture", "x.png"))
    message = await final_message(fake, broken)
    assert message.ephemeral and "isn't a picture" in message.content

    huge = await fake.run_command("caption", ALICE, text="hi", image=Upload(bytes(11 * 2**20), "big.png"))
    message = await final_message(fake, huge)
    assert message.ephemeral and "under 10 MB" in message.content
    assert len(fake.downloads) == 1 and fake.downloads[0].endswith(
        "/x.png"
    )  # the 11 MB one was refused by its size


# ---- leaderboards and forgetting one's own meme ------------------------------------------------

CAROL = FakeUser(14, "carol", nick="Carol the Great")  # a server nickname is what the server shows
DAVE = FakeUser(15, "dave")


def meme_number_of(message: FakeMessage) -> int:
    return int(message.buttons[0]["custom_id"].rsplit(":", 1)[1])


async def vote_up(fake: FakeDiscord, message: FakeMessage, *users: FakeUser, dm: bool = False) -> None:
    for user in users:
        press = await fake.press_button(message, message.buttons[0]["custom_id"], user, dm=dm)
        await fake.wait_until(lambda p=press: p.acknowledged)


async def post_caption(fake: FakeDiscord, user: FakeUser, text: str, **where: object) -> FakeMessage:
    interaction = await fake.run_command("caption", user, template="drake", text=text, **where)
    return await final_message(fake, interaction)


async def test_leaderboard_spans_the_servers_channels_with_display_names_and_jump_links(
    fake: FakeDiscord, start_bot
) -> None:
    await start_bot()
    other_channel = fake.channel_id + 100
    here = await post_caption(fake, ALICE, "here | now")
    there = await post_caption(fake, CAROL, "over | there", channel_id=other_channel)
    await post_caption(fake, BOB, "nobody | voted")
    in_dm = await post_caption(fake, ALICE, "just | us", dm=True)
    await vote_up(fake, here, BOB)
    await vote_up(fake, there, ALICE, BOB)
    await vote_up(fake, in_dm, ALICE, dm=True)

    synced = {c["name"]: c for c in fake.commands[None]}
    assert [c["value"] for c in synced["top"]["options"][0]["choices"]] == ["week", "month", "all"]
    board = await final_message(fake, await fake.run_command("top", DAVE))
    assert not board.ephemeral  # a leaderboard is for the channel to see
    (embed,) = board.embeds
    assert embed["title"] == "🏆 Best memes on this server, the last 7 days"
    server = f"https://discord.com/channels/{fake.guild_id}"
    assert embed["description"].splitlines() == [
        f"**1.** over \\| there — Carol the Great · **+2** (👍 2 👎 0) · "
        f"[#{meme_number_of(there)}]({server}/{other_channel}/{there.id})",
        f"**2.** here \\| now — alice · **+1** (👍 1 👎 0) · "
        f"[#{meme_number_of(here)}]({server}/{fake.channel_id}/{here.id})",
    ]
    asked = await fake.run_command("top", DAVE, channel_id=other_channel, period="all")
    every = await final_message(fake, asked)
    assert every.embeds[0]["title"].endswith(", all time")
    assert every.embeds[0]["description"] == embed["description"]

    # In a DM the board is the DM's own: the user's memes there, linked in the DM.
    (mine,) = (await final_message(fake, await fake.run_command("top", ALICE, dm=True))).embeds
    assert mine["title"] == "🏆 Best memes here, the last 7 days"
    assert mine["description"] == (
        f"**1.** just \\| us — you · **+1** (👍 1 👎 0) · "
        f"[#{meme_number_of(in_dm)}](https://discord.com/channels/@me/{fake.dm_channel_id}/{in_dm.id})"
    )


async def test_leaderboard_leaves_out_a_meme_whose_message_a_moderator_deleted(
    fake: FakeDiscord, start_bot
) -> None:
    bot = await start_bot()
    deleted = await post_caption(fake, ALICE, "taken | down")
    kept = await post_caption(fake, BOB, "still | up")
    await vote_up(fake, deleted, BOB, CAROL)
    await vote_up(fake, kept, ALICE)
    fake.delete_message(deleted)  # the bot is not told: it has no message intents

    board = await final_message(fake, await fake.run_command("top", DAVE))
    (line,) = board.embeds[0]["description"].splitlines()
    assert line.startswith("**1.** still \\| up — bob") and f"#{meme_number_of(kept)}]" in line
    assert (await bot.storage.get_meme(meme_number_of(deleted))).message_deleted
    looked = [r for r in fake.requests if r.method == "GET" and r.path.endswith(f"/messages/{deleted.id}")]
    assert [r.status for r in looked] == [404]

    again = await final_message(fake, await fake.run_command("top", DAVE))
    assert again.embeds[0]["description"] == board.embeds[0]["description"]
    assert len([r for r in fake.requests if r.path.endswith(f"/messages/{deleted.id}")]) == 1  # known gone

    fake.delete_message(kept)
    empty = await final_message(fake, await fake.run_command("top", DAVE))
    assert not empty.embeds and empty.content.startswith(
        "No memes on this server from the last 7 days with more 👍 than 👎 yet."
    )


async def test_forget_deletes_your_meme_everywhere_and_refuses_someone_elses(
    fake: FakeDiscord, start_bot, tmp_path: Path
) -> None:
    bot = await start_bot()
    mine = await post_caption(fake, ALICE, "mine | all mine")
    number = meme_number_of(mine)
    await vote_up(fake, mine, BOB)
    bobs = await post_caption(fake, BOB, "bob | stays")
    await vote_up(fake, bobs, ALICE)

    # The meme option offers the user's own memes, by number and caption.
    offered = await fake.autocomplete("forget", ALICE, focused="meme", meme="")
    assert offered == [{"name": f"#{number} drake-hotline-bling: mine | all mine", "value": str(number)}]
    assert [c["value"] for c in await fake.autocomplete("forget", BOB, focused="meme", meme="")] == [
        str(meme_number_of(bobs))
    ]

    async def forget(user: FakeUser, meme: str) -> str:
        reply = await final_message(fake, await fake.run_command("forget", user, meme=meme))
        assert reply.ephemeral  # only the asker sees the answer
        return reply.content

    assert await forget(BOB, str(number)) == (
        f"Meme #{number} isn't yours: only the person who made it can forget it."
    )
    assert await forget(ALICE, "abc") == (
        "“abc” isn't a meme number. Pick one of yours in `/forget meme:`, or type its number from "
        "`/history`, e.g. `/forget meme:12`."
    )
    unknown = await forget(ALICE, "999999")
    assert unknown == "There's no meme #999999. `/history` lists yours with their numbers."
    assert not mine.deleted and await bot.storage.get_meme(number) is not None

    assert await forget(ALICE, f"#{number}") == (
        f"Forgotten: meme #{number} is gone from `/history`, `/top` and exports, votes and all."
    )
    assert mine.deleted  # the bot took its own message down
    assert await bot.storage.get_meme(number) is None
    history = await fake.run_command("history", ALICE)
    await fake.wait_until(lambda: history.acknowledged)
    assert history.messages[0].content == "You have not made any memes yet: try `/meme`."
    board = await final_message(fake, await fake.run_command("top", DAVE))
    (line,) = board.embeds[0]["description"].splitlines()
    assert f"#{meme_number_of(bobs)}]" in line
    export = tmp_path / "rated.jsonl"
    assert await export_memes(bot.storage, export, "jsonl", progress=False) == 1
    assert "mine" not in export.read_text()
