"""The Telegram bot end to end: the real python-telegram-bot against a fake Bot API server.

In-process tests run the real TelegramFrontEnd on a real MemeService (catalog, renderer,
SQLite, ModelPool) with a scripted caption model; the last tests run `memebot run` itself
as a subprocess, configured like an operator would, with a tiny real model.
The fake (fakes/telegram_server.py) plays Telegram and its users.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from bot.app import run_bot
from bot.export import export_memes
from bot.memes import ChatContext
from bot.render import Renderer
from bot.service import MemeService
from bot.storage import Score, Storage, format_time
from bot.telegram_app import COMMANDS, HELP, SendRetry, TelegramFrontEnd, Timeouts
from common.config import ENV_OVERRIDES, Config, TelegramConfig
from fakes.caption_model import (
    ScriptedCaptions,
    config_for_tests,
    scripted_service,
    write_untrained_checkpoint,
)
from fakes.telegram_server import GROUP_ID, Call, FakeTelegramServer
from tests.helpers.postgres import free_port

pytestmark = pytest.mark.timeout(60)

GROUP = GROUP_ID
ALICE, BOB, ADMIN = 501, 502, 503
# Short timeouts and back-off so failure paths take a second, not a minute.
FAST_TIMEOUTS = Timeouts(connect_s=2.0, read_s=1.0, write_s=2.0, media_write_s=2.0, pool_s=1.0)
FAST_RETRY = SendRetry(attempts=3, backoff_s=0.05)


@dataclass
class Harness:
    server: FakeTelegramServer
    config: Config
    model: ScriptedCaptions
    service: MemeService


def telegram_config(server: FakeTelegramServer) -> TelegramConfig:
    return server.bot_config()


@asynccontextmanager
async def running_bot(server: FakeTelegramServer, service: MemeService) -> AsyncIterator[TelegramFrontEnd]:
    bot = TelegramFrontEnd(service, telegram_config(server), timeouts=FAST_TIMEOUTS, retry=FAST_RETRY)
    await bot.start()
    try:
        yield bot
    finally:
        await bot.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    config = config_for_tests(tmp_path, user_burst=100, chat_burst=100)
    model = ScriptedCaptions()
    async with FakeTelegramServer() as server, scripted_service(config, model) as service:
        async with running_bot(server, service):
            yield Harness(server, config, model, service)


def meme_id(call: Call) -> int:
    """The meme id carried by the 👍 button of a sent meme."""
    return int(call.keyboard[0][0]["callback_data"].split(":")[1])


def button_texts(call: Call) -> list[str]:
    return [button["text"] for row in call.keyboard for button in row]


def replies(server: FakeTelegramServer, chat_id: int = GROUP) -> list[str]:
    return [c.params["text"] for c in server.sent("sendMessage", chat_id)]


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_start_registers_the_command_menu(harness: Harness):
    (call,) = await harness.server.wait_for("setMyCommands")
    assert [c["command"] for c in call.params["commands"]] == [name for name, _ in COMMANDS]


async def test_meme_in_a_group_is_a_photo_reply_with_rating_keyboard(harness: Harness):
    server = harness.server
    command = server.send_text("/meme change-my-mind pineapple on", chat_id=GROUP, user_id=ALICE)

    (photo,) = await server.wait_for("sendPhoto")
    assert server.sent("sendChatAction", GROUP)[0].params["action"] == "upload_photo"
    assert photo.chat_id == GROUP
    assert photo.params["reply_parameters"]["message_id"] == command["message_id"]
    assert photo.params["caption"].startswith("pineapple on take 1\n")
    assert "Change My Mind" in photo.params["caption"]
    image = Image.open(io.BytesIO(photo.files["photo"]))
    assert image.size[0] > 100 and image.size[1] > 100

    meme = meme_id(photo)
    assert photo.keyboard == [
        [
            {"text": "👍 0", "callback_data": f"v:{meme}:1"},
            {"text": "👎 0", "callback_data": f"v:{meme}:-1"},
            {"text": "🔁", "callback_data": f"r:{meme}"},
        ]
    ]
    stored = await harness.service.storage.get_meme(meme)
    assert (stored.template, stored.prefix, stored.platform, stored.chat_id) == (
        "change-my-mind",
        "pineapple on",
        "telegram",
        str(GROUP),
    )

    async def attached() -> bool:
        stored = await harness.service.storage.get_meme(meme)
        return stored.message_id == str(server.message_of(photo)["message_id"])

    await until(attached)


async def test_meme_forms_random_template_only_and_addressed_to_the_bot(harness: Harness):
    server = harness.server
    random_pick = server.send_text("/meme", user_id=ALICE)
    no_prefix = server.send_text("/meme change-my-mind", user_id=ALICE)
    addressed = server.send_text("/meme@memebot_test_bot two-buttons tabs", user_id=ALICE)
    server.send_text("/meme@some_other_bot drake", user_id=ALICE)  # for another bot: ignored
    photos = await server.wait_for("sendPhoto", 3)
    answered = {
        p.params["reply_parameters"]["message_id"]: await harness.service.storage.get_meme(meme_id(p))
        for p in photos
    }
    assert set(answered) == {random_pick["message_id"], no_prefix["message_id"], addressed["message_id"]}
    assert answered[random_pick["message_id"]].template in {t.slug for t in harness.service.catalog.templates}
    assert (answered[no_prefix["message_id"]].template, answered[no_prefix["message_id"]].prefix) == (
        "change-my-mind",
        "",
    )
    assert (answered[addressed["message_id"]].template, answered[addressed["message_id"]].prefix) == (
        "two-buttons",
        "tabs",
    )
    # A later command is answered, and still no photo for the other bot's command.
    server.send_text("/help", user_id=ALICE)
    await server.wait_for("sendMessage")
    assert len(server.sent("sendPhoto")) == 3


async def test_thumbs_up_updates_counts_on_the_message_and_in_the_database(harness: Harness):
    server = harness.server
    server.send_text("/meme drake", user_id=ALICE)
    (photo,) = await server.wait_for("sendPhoto")
    meme, message = meme_id(photo), server.message_of(photo)

    server.press(message, f"v:{meme}:1", user_id=BOB)
    (edit,) = await server.wait_for("editMessageReplyMarkup")
    assert edit.params["message_id"] == str(message["message_id"])
    assert button_texts(edit) == ["👍 1", "👎 0", "🔁"]
    (answer,) = await server.wait_for("answerCallbackQuery")
    assert "👍 1" in answer.params["text"]
    assert await harness.service.storage.score(meme) == Score(1, 0)

    server.press(message, f"v:{meme}:-1", user_id=ALICE)
    server.press(message, f"v:{meme}:1", user_id=BOB)  # the same press again withdraws the vote
    await server.wait_for("editMessageReplyMarkup", 3)
    await until(lambda: button_texts(server.sent("editMessageReplyMarkup")[-1]) == ["👍 0", "👎 1", "🔁"])
    assert await harness.service.storage.score(meme) == Score(0, 1)
    assert server.message_of(photo)["reply_markup"]["inline_keyboard"][0][1]["text"] == "👎 1"


async def test_reroll_sends_a_new_meme_for_the_same_template_and_prefix(harness: Harness):
    server = harness.server
    server.send_text("/meme two-buttons tabs", user_id=ALICE)
    (first,) = await server.wait_for("sendPhoto")
    server.press(server.message_of(first), f"r:{meme_id(first)}", user_id=BOB)
    first, second = await server.wait_for("sendPhoto", 2)
    assert meme_id(second) != meme_id(first)
    again = await harness.service.storage.get_meme(meme_id(second))
    assert (again.template, again.prefix) == ("two-buttons", "tabs")
    assert first.params["caption"] != second.params["caption"]
    assert second.params["reply_parameters"]["message_id"] == server.message_of(first)["message_id"]
    await server.wait_for("answerCallbackQuery")


async def test_buttons_keep_working_after_a_restart(tmp_path: Path):
    config = config_for_tests(tmp_path)
    async with FakeTelegramServer() as server:
        async with scripted_service(config, ScriptedCaptions()) as service, running_bot(server, service):
            server.send_text("/meme drake", user_id=ALICE)
            (photo,) = await server.wait_for("sendPhoto")
        # A new process: new service, new bot, same database; the old message's button still works.
        async with scripted_service(config, ScriptedCaptions()) as service, running_bot(server, service):
            server.press(server.message_of(photo), f"v:{meme_id(photo)}:1", user_id=BOB)
            (edit,) = await server.wait_for("editMessageReplyMarkup")
            assert button_texts(edit)[0] == "👍 1"
            assert await service.storage.score(meme_id(photo)) == Score(1, 0)


async def test_settings_are_refused_to_members_and_an_admins_change_applies(harness: Harness):
    server = harness.server
    server.send_text("/settings temperature 0.3", user_id=ALICE)
    (refusal,) = await server.wait_for("sendMessage")
    assert "Only the group's admins can change" in refusal.params["text"]
    assert "Manage Server" not in refusal.params["text"]  # Discord's words, not Telegram's
    assert server.sent("getChatMember")[0].params["user_id"] == str(ALICE)

    server.set_member(GROUP, ADMIN, "administrator")
    server.send_text("/settings temperature 0.3", user_id=ADMIN)
    _, saved = await server.wait_for("sendMessage", 2)
    assert "Saved" in saved.params["text"] and "temperature: 0.3" in saved.params["text"]

    server.send_text("/meme drake", user_id=ALICE)
    await server.wait_for("sendPhoto")
    assert harness.model.last.temperature == 0.3

    server.send_text("/settings", user_id=ALICE)  # anyone may look
    await server.wait_for("sendMessage", 3)
    assert "temperature: 0.3" in replies(server)[-1]


async def test_group_owner_and_private_chat_users_may_change_settings(harness: Harness):
    server = harness.server
    server.set_member(GROUP, ADMIN, "creator")
    server.send_text("/settings method=beam beam_width=4", user_id=ADMIN)
    await server.wait_for("sendMessage")
    assert "method: beam" in replies(server)[-1] and "beam_width: 4" in replies(server)[-1]

    calls = len(server.sent("getChatMember"))
    server.send_text("/settings cooldown 5", chat_id=ALICE, user_id=ALICE)
    await server.wait_for("sendMessage", 2)
    assert "cooldown_s: 5" in replies(server, ALICE)[-1]
    assert len(server.sent("getChatMember")) == calls  # no need to ask Telegram in a private chat
    assert "reply_parameters" not in server.sent("sendMessage", ALICE)[-1].params


async def test_refusals_and_hints_name_group_admins_and_telegrams_command_syntax(harness: Harness):
    """The service says what is wrong; Telegram's words say how to fix it on Telegram: the
    command with its arguments after a space, and the group's admins (not Discord's options
    or Manage Server)."""
    server = harness.server
    server.set_member(GROUP, ADMIN, "administrator")

    async def reply_to(text: str, user_id: int = ALICE) -> str:
        before = len(replies(server))
        server.send_text(text, user_id=user_id)
        await server.wait_for("sendMessage", before + 1)
        return replies(server)[-1]

    assert "allowed_templates: drake-hotline-bling" in await reply_to("/settings templates drake", ADMIN)
    refused = await reply_to("/meme two-buttons")
    assert refused.startswith("Two Buttons isn't enabled in this chat.")
    assert "group's admins" in refused and "/settings templates" in refused

    banned = await reply_to("/caption drake no | fuck yes")
    assert 'has a word I don\'t write ("f***")' in banned and "/settings filter off" in banned
    assert (
        await reply_to("/caption drake")
    ) == "Give me some text, e.g. /caption drake no thanks | yes please"

    usage = await reply_to("/settings =", ADMIN)
    assert usage.startswith("Name a setting and a value, e.g. /settings temperature 0.9")
    assert (await reply_to("/settings temp hot", ADMIN)) == (
        "temperature must be a number from 0.1 to 2 (got 'hot')."
    )
    shown = await reply_to("/settings")  # anyone may look: the values, then what each one does
    assert "allowed_templates: drake-hotline-bling" in shown
    assert "temperature (or temp): higher = wilder captions (0.1 to 2)" in shown
    everything = refused + banned + usage + shown
    assert (
        "Manage Server" not in everything and "memeconfig" not in everything and "template:" not in everything
    )
    assert not server.sent("sendPhoto")


async def test_unknown_template_gets_suggestions(harness: Harness):
    harness.server.send_text("/caption drakkar no | yes", user_id=ALICE)
    (reply,) = await harness.server.wait_for("sendMessage")
    assert 'No template "drakkar"' in reply.params["text"]
    assert "drake-hotline-bling" in reply.params["text"]
    assert not harness.server.sent("sendPhoto")


async def test_meme_whose_first_word_is_no_template_picks_one_for_the_words(harness: Harness):
    harness.server.send_text("/meme when the tests pass on the first try", user_id=ALICE)
    (photo,) = await harness.server.wait_for("sendPhoto")
    caption = photo.params["caption"]
    assert caption.startswith("when the tests pass on the first try take 1")  # all of it is the caption
    assert "I picked " in caption and "; or try /meme " in caption  # and how to ask for another
    (scoring,) = harness.model.scorings
    assert scoring.text == "when the tests pass on the first try"


async def test_caption_renders_the_given_text(harness: Harness):
    harness.server.send_text("/caption drake no thanks | yes please", user_id=ALICE)
    (photo,) = await harness.server.wait_for("sendPhoto")
    stored = await harness.service.storage.get_meme(meme_id(photo))
    assert stored.boxes == ["no thanks", "yes please"] and stored.method == "caption"
    template = harness.service.catalog.get("drake-hotline-bling")
    expected = Renderer(harness.config.template_images_dir).render(template, ["no thanks", "yes please"])
    assert photo.files["photo"] == expected.data
    assert photo.params["caption"].startswith("no thanks | yes please")


async def test_three_boxes_too_many_boxes_and_undrawable_characters_are_told(harness: Harness):
    server = harness.server
    server.send_text("/caption two-buttons fix it | ship it | me", user_id=ALICE)
    (photo,) = await server.wait_for("sendPhoto")
    assert (await harness.service.storage.get_meme(meme_id(photo))).boxes == ["fix it", "ship it", "me"]
    server.send_text("/caption drake a | b | c", user_id=ALICE)
    await server.wait_for("sendMessage")
    assert replies(server)[-1].startswith("Drake Hotline Bling has 2 text boxes, and you gave 3")
    server.send_text("/caption drake \U0001e290 | ok", user_id=ALICE)
    photos = await server.wait_for("sendPhoto", 2)
    if harness.service.renderer.fonts.font_for("\U0001e290") is None:
        assert "Couldn't draw \U0001e290 (U+1E290)" in photos[-1].params["caption"]


async def test_templates_history_help_and_bad_caption(harness: Harness):
    server = harness.server
    server.send_text("/templates change mind", user_id=ALICE)
    await server.wait_for("sendMessage")
    assert replies(server)[-1].splitlines()[0] == "change-my-mind — Change My Mind"

    server.send_text("/history", user_id=ALICE)
    await server.wait_for("sendMessage", 2)
    assert "haven't made any memes" in replies(server)[-1]
    server.send_text("/caption two-buttons tabs | spaces", user_id=ALICE)
    await server.wait_for("sendPhoto")
    server.send_text("/history", user_id=ALICE)
    await server.wait_for("sendMessage", 3)
    assert "two-buttons: tabs | spaces" in replies(server)[-1]

    server.send_text("/caption drake", user_id=ALICE)
    await server.wait_for("sendMessage", 4)
    assert "Give me some text" in replies(server)[-1]

    server.send_text("/start", chat_id=BOB, user_id=BOB)
    await server.wait_for("sendMessage", where=lambda c: c.chat_id == BOB)
    assert replies(server, BOB) == [HELP]


async def test_bot_survives_server_errors_and_timeouts(harness: Harness):
    server = harness.server
    server.fail_next("getUpdates", status=500)
    server.stall_next("getUpdates", 3.0)  # longer than the client's read timeout
    await server.faults_used()
    # Polling carried on; now the upload fails once with a 500 and once with a timeout.
    server.fail_next("sendPhoto", status=502)
    server.stall_next("sendPhoto", 1.5)
    server.send_text("/meme drake", user_id=ALICE)
    (photo,) = await server.wait_for("sendPhoto", timeout=15)
    assert meme_id(photo) > 0
    # Flood control: the bot waits as told, then sends.
    server.fail_next("sendMessage", status=429, retry_after=1)
    server.send_text("/help", user_id=ALICE)
    (reply,) = await server.wait_for("sendMessage", timeout=15)
    assert reply.params["text"] == HELP


# --- webhook mode ----------------------------------------------------------------------------------

WEBHOOK_SECRET = "hook-Secret_0123456789"


async def test_webhook_mode_serves_what_telegram_posts_and_refuses_a_wrong_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """`memebot run` (in-process: run_bot) with [telegram] webhook_url: updates come by POST."""
    caplog.set_level(logging.DEBUG)  # PTB logs setWebhook's parameters at DEBUG: all must be redacted
    port = free_port()
    async with FakeTelegramServer() as server:
        telegram = replace(
            server.bot_config(),
            webhook_url="https://bot.example.test/telegram/hook",
            webhook_listen=f"127.0.0.1:{port}",
            webhook_secret=WEBHOOK_SECRET,
        )
        config = replace(config_for_tests(tmp_path), telegram=telegram)  # no model: /caption
        # Telegram posts to the public https URL; the reverse proxy there forwards to this process.
        server.webhook_proxy = f"http://127.0.0.1:{port}"
        stop = asyncio.Event()
        running = asyncio.create_task(run_bot(config, stop))
        try:
            await server.wait_for("setWebhook", timeout=20)
            assert server.webhook == {"url": telegram.webhook_url, "secret_token": WEBHOOK_SECRET}
            message = server.send_text("/caption drake by | webhook", user_id=ALICE)  # POSTed to the bot
            (photo,) = await server.wait_for("sendPhoto")
            server.press(server.message_of(photo), f"v:{meme_id(photo)}:1", user_id=BOB)
            (edit,) = await server.wait_for("editMessageReplyMarkup")
            assert button_texts(edit)[0] == "👍 1"
            assert server.webhook_statuses == [200, 200]

            # Anyone who finds the URL could post updates: without the secret PTB refuses them.
            forged = {"update_id": 10_000, "message": {**message, "message_id": 9_999, "text": "/help"}}
            assert await server.post_update(forged, secret="not-the-secret") == 403
            assert await server.post_update(forged, secret=None) == 403
            await asyncio.sleep(0.3)
            assert not server.sent("sendMessage")  # nothing answered the forged /help
        finally:
            stop.set()
            await asyncio.wait_for(running, timeout=10)
    assert "receiving updates as @memebot_test_bot" in caplog.text
    assert WEBHOOK_SECRET not in caplog.text


# --- `memebot run` as an operator runs it ---------------------------------------------------------


def operator_env(**extra: str) -> dict[str, str]:
    """This environment without memebot overrides (they would beat the test's config file)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return {**env, **extra}


def write_config(path: Path, server: FakeTelegramServer, tmp_path: Path, checkpoint: Path) -> Path:
    path.write_text(
        f"""
[telegram]
enabled = true
api_url = "{server.base_url}"
file_url = "{server.file_url}"
poll_timeout_s = 1.0

[storage]
database = "{tmp_path / "bot.db"}"
user_hash_key = "operator-test-key"

[model]
checkpoint = "{checkpoint}"
device = "cpu"
threads = 1

[generation]
method = "greedy"
max_length = 20
"""
    )
    return path


async def memebot(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("model") / "untrained.pt")


async def test_memebot_run_serves_telegram_and_stops_cleanly_on_sigterm(tmp_path: Path, checkpoint: Path):
    async with FakeTelegramServer() as server:
        config = write_config(tmp_path / "config.toml", server, tmp_path, checkpoint)
        proc = await memebot("--config", str(config), "run", env=operator_env(TELEGRAM_TOKEN=server.token))
        try:
            await server.wait_for("setMyCommands", timeout=45)
            server.send_text("/meme change-my-mind pineapple on", user_id=ALICE)
            (photo,) = await server.wait_for("sendPhoto", timeout=20)
            # The untrained model writes gibberish, but after the user's words.
            assert photo.params["caption"].startswith("pineapple on")
            Image.open(io.BytesIO(photo.files["photo"])).verify()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()
    assert "stopping" in stderr.decode()
    assert "Traceback" not in stderr.decode()
    async with await Storage.open(tmp_path / "bot.db", "operator-test-key") as storage:
        stored = await storage.get_meme(meme_id(photo))
        assert stored.model_id.startswith("transformer-") and stored.method == "greedy"
        assert stored.message_id is not None


async def test_memebot_run_without_a_token_is_a_clear_startup_error(tmp_path: Path):
    async with FakeTelegramServer() as server:
        config = write_config(tmp_path / "config.toml", server, tmp_path, tmp_path / "absent.pt")
        proc = await memebot("--config", str(config), "run", env=operator_env())
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "TELEGRAM_TOKEN is not set" in stderr.decode()
    assert not server.calls  # it gave up before connecting


async def test_memebot_run_with_a_rejected_token_says_so(tmp_path: Path):
    async with FakeTelegramServer() as server:
        config = write_config(tmp_path / "config.toml", server, tmp_path, tmp_path / "absent.pt")
        proc = await memebot("--config", str(config), "run", env=operator_env(TELEGRAM_TOKEN="999:WRONG"))
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    text = stderr.decode()
    assert "rejected the bot token" in text and "no model yet" in text
    assert "Traceback" not in text


# --- safety: privacy, errors, secrets -------------------------------------------------------------

PRIVATE_USER = 987654321


async def test_no_raw_user_id_reaches_the_database_file(harness: Harness):
    server = harness.server
    # A display name is kept with memes made in groups (for /top); the fake's default embeds the id.
    server.name_user(PRIVATE_USER, "Priya")
    # In a private chat the chat id is the user's id: it must be stored hashed too.
    server.send_text("/meme drake", chat_id=PRIVATE_USER, user_id=PRIVATE_USER)
    (photo,) = await server.wait_for("sendPhoto")
    server.send_text("/settings cooldown 1", chat_id=PRIVATE_USER, user_id=PRIVATE_USER)
    server.press(server.message_of(photo), f"v:{meme_id(photo)}:1", user_id=PRIVATE_USER)
    server.send_text("/caption drake hi | there", chat_id=GROUP, user_id=PRIVATE_USER)
    await server.wait_for("sendPhoto", 2)
    await server.wait_for("editMessageReplyMarkup")
    await server.wait_for("sendMessage")
    await until(lambda: harness.service.storage.score(meme_id(photo)))
    private = ChatContext("telegram", str(PRIVATE_USER), str(PRIVATE_USER), is_private=True)
    assert len(await harness.service.history(private)) == 2  # still the user's own history
    assert (await harness.service.get_settings(private)).cooldown_s == 1
    files = list(harness.config.database_path.parent.glob(harness.config.database_path.name + "*"))
    data = b"".join(path.read_bytes() for path in files)
    assert data and str(PRIVATE_USER).encode() not in data


async def test_a_failing_handler_gets_a_reply_with_a_request_id_and_a_log_line(
    harness: Harness, caplog: pytest.LogCaptureFixture
):
    server = harness.server
    server.fail_next("getChatMember", status=500, times=FAST_RETRY.attempts)
    server.send_text("/settings temperature 0.5", user_id=ALICE)
    (reply,) = await server.wait_for("sendMessage")
    text = reply.params["text"]
    assert "went wrong on my side (error " in text
    request_id = text.split("(error ")[1].split(")")[0]
    assert any(request_id in record.getMessage() for record in caplog.records if record.levelname == "ERROR")
    server.send_text("/help", user_id=ALICE)  # and the bot carries on
    await server.wait_for("sendMessage", 2)
    assert replies(server)[-1] == HELP


SECRET_TOKEN = "123456:SECRET-TOKEN-abc"


async def test_the_token_never_appears_in_memebot_output(tmp_path: Path):
    async with FakeTelegramServer(token=SECRET_TOKEN) as server:
        config = write_config(tmp_path / "config.toml", server, tmp_path, tmp_path / "absent.pt")
        proc = await memebot(
            "--config", str(config), "run", "-v", env=operator_env(TELEGRAM_TOKEN=SECRET_TOKEN)
        )
        try:
            await server.wait_for("setMyCommands", timeout=45)
            server.fail_next("getUpdates", status=500)
            server.send_text("/nonsense", user_id=ALICE)
            server.send_text("/meme ../../etc/passwd", user_id=ALICE)
            server.fail_next(
                "sendPhoto", status=500, times=3
            )  # every retry fails: an exception in the handler
            server.send_text("/caption drake no | yes", user_id=ALICE)
            server.fail_next("getChatMember", status=500, times=3)
            server.send_text("/settings temperature 0.5", user_id=ALICE)
            await server.wait_for("sendMessage", 3, timeout=30)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 20)
    output = (stdout + stderr).decode()
    assert "request " in output  # the handler errors were logged, with their ids
    assert SECRET_TOKEN not in output and "SECRET-TOKEN-abc" not in output
    assert proc.returncode == 0


# --- your own picture -----------------------------------------------------------------------------


def photo_bytes(size: tuple[int, int] = (480, 360), fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buffer, fmt)
    return buffer.getvalue()


async def test_reply_to_a_photo_with_meme_captions_that_picture(harness: Harness):
    server = harness.server
    photo = server.send_photo(photo_bytes((480, 360)), user_id=BOB)
    command = server.send_text("/meme when the cat", user_id=ALICE, reply_to_message=photo)

    (sent,) = await server.wait_for("sendPhoto")
    assert sent.params["reply_parameters"]["message_id"] == command["message_id"]
    assert (
        sent.params["caption"].startswith("when the cat take 1") and "your picture" in sent.params["caption"]
    )
    image = Image.open(io.BytesIO(sent.files["photo"]))
    assert image.size == (480, 360)  # the picture itself, not a template
    assert [c.params["file_id"] for c in server.sent("getFile")] == [
        photo["photo"][-1]["file_id"]
    ]  # the full size
    stored = await harness.service.storage.get_meme(meme_id(sent))
    assert stored.template.startswith("upload:") and stored.prefix == "when the cat"

    server.press(server.message_of(sent), f"r:{meme_id(sent)}", user_id=ALICE)  # 🔁 on the picture
    (_, again) = await server.wait_for("sendPhoto", count=2)
    assert Image.open(io.BytesIO(again.files["photo"])).size == (480, 360)


async def test_a_photo_with_the_command_as_caption_and_an_image_file_both_work(harness: Harness):
    server = harness.server
    server.send_photo(photo_bytes((400, 400)), "/caption top text | bottom text", user_id=ALICE)
    (sent,) = await server.wait_for("sendPhoto")
    assert sent.params["caption"].startswith("top text | bottom text")

    server.send_photo(
        photo_bytes((300, 200), "PNG"), "/meme@memebot_test_bot", user_id=ALICE, as_document=True
    )
    (_, second) = await server.wait_for("sendPhoto", count=2)
    assert Image.open(io.BytesIO(second.files["photo"])).size == (300, 200)

    server.send_photo(photo_bytes(), "/meme@some_other_bot hello", user_id=ALICE)  # not for us
    server.send_photo(photo_bytes(), "just a holiday photo", user_id=ALICE)  # no command at all
    await asyncio.sleep(0.5)
    assert len(server.sent("sendPhoto")) == 2 and not replies(server)


async def test_a_picture_that_cannot_be_a_meme_gets_a_clear_answer(harness: Harness):
    server = harness.server
    not_an_image = server.send_photo(b"this is not an image at all", user_id=BOB, as_document=True)
    server.send_text("/meme", user_id=ALICE, reply_to_message=not_an_image)
    (answer,) = await server.wait_for("sendMessage")
    assert "isn't a picture" in answer.params["text"] and "JPEG" in answer.params["text"]

    huge = server.send_photo(b"\xff\xd8" + bytes(11 * 2**20), user_id=BOB)
    server.send_text("/caption top | bottom", user_id=ALICE, reply_to_message=huge)
    (_, too_big) = await server.wait_for("sendMessage", count=2)
    assert "MB" in too_big.params["text"] and "under 10 MB" in too_big.params["text"]
    assert len(server.sent("getFile")) == 1  # the 11 MB one was refused by its size, never downloaded
    assert not server.sent("sendPhoto") and (await harness.service.storage.stats()).memes == 0


async def test_a_photo_of_a_known_template_is_recognised_and_said_so(harness: Harness):
    server = harness.server
    drake = harness.service.catalog.get("drake-hotline-bling")
    with Image.open(harness.config.template_images_dir / drake.image.file) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=30)  # re-encoded, as a forwarded meme is
    photo = server.send_photo(buffer.getvalue(), user_id=BOB)
    server.send_text("/caption nope | yes", user_id=ALICE, reply_to_message=photo)
    (sent,) = await server.wait_for("sendPhoto")
    assert "recognised: Drake Hotline Bling · /meme drake-hotline-bling" in sent.params["caption"]
    assert (await harness.service.storage.get_meme(meme_id(sent))).template == "drake-hotline-bling"


# --- leaderboards and forgetting one's own meme ---------------------------------------------------

CAROL, DAVE, ERIN = 504, 505, 506
OTHER_GROUP = -2002


async def post_meme(harness: Harness, text: str, user_id: int, chat_id: int = GROUP) -> Call:
    """A user's command that makes a meme; its photo, once the meme knows its message and file_id."""
    server = harness.server
    before = len(server.sent("sendPhoto"))
    server.send_text(text, chat_id=chat_id, user_id=user_id)
    photo = (await server.wait_for("sendPhoto", before + 1))[-1]

    async def attached() -> bool:
        return (await harness.service.storage.get_meme(meme_id(photo))).media_ref is not None

    await until(attached)
    return photo


async def vote(server: FakeTelegramServer, photo: Call, value: int, *voters: int) -> None:
    for voter in voters:
        before = len(server.sent("answerCallbackQuery"))
        server.press(server.message_of(photo), f"v:{meme_id(photo)}:{value}", user_id=voter)
        await server.wait_for("answerCallbackQuery", before + 1)


def file_id(server: FakeTelegramServer, photo: Call) -> str:
    """The file_id Telegram gave the photo the bot sent."""
    return server.message_of(photo)["photo"][-1]["file_id"]


async def reply_to(server: FakeTelegramServer, text: str, user_id: int = ALICE, **extra: object) -> str:
    """The bot's first answer (a text) to a command in the group."""
    command = server.send_text(text, user_id=user_id, **extra)
    answers = await server.wait_answer(server.message_key(command))
    assert answers, f"no answer to {text!r}"
    return answers[0].params["text"]


def backdate(config: Config, meme: int, days: float) -> None:
    """Make a meme look `days` older, as a second reader/writer of the file (`memebot db` is one)."""
    conn = sqlite3.connect(config.database_path)
    with conn:
        made = format_time(datetime.now(UTC) - timedelta(days=days))
        conn.execute("UPDATE memes SET created_at = ? WHERE id = ?", (made, meme))
    conn.close()


async def test_leaderboard_ranks_the_chats_memes_names_authors_and_reposts_them_by_file_id(
    harness: Harness,
):
    server = harness.server
    server.name_user(ALICE, "Alice", "Liddell")
    server.name_user(BOB, "Bob")
    first = await post_meme(harness, "/caption drake one | two", ALICE)
    second = await post_meme(harness, "/caption drake three | four", BOB)
    third = await post_meme(harness, "/caption two-buttons fix it | ship it", ALICE)
    await post_meme(harness, "/caption drake nobody | voted", ALICE)  # unrated: not on the board
    disliked = await post_meme(harness, "/caption drake booed | off", BOB)
    elsewhere = await post_meme(harness, "/caption drake other | group", CAROL, chat_id=OTHER_GROUP)
    await vote(server, third, 1, BOB, CAROL, DAVE)
    await vote(server, third, -1, ERIN)  # +2 with 3 up: first
    await vote(server, second, 1, ALICE, CAROL)  # +2 with 2 up, newer than `first`: ties it, listed first
    await vote(server, first, 1, BOB, CAROL)
    await vote(server, disliked, -1, ALICE)
    await vote(server, elsewhere, 1, ALICE, BOB, DAVE, ERIN)
    rendered = len(server.sent("sendPhoto"))

    command = server.send_text("/top", user_id=DAVE)
    (album,) = await server.wait_for("sendMediaGroup")
    listing = server.answers[server.message_key(command)][0]
    assert listing.params["text"].splitlines() == [
        "🏆 Best memes here, the last 7 days:",
        f"1. Alice Liddell: +2 (👍 3 👎 1) · #{meme_id(third)} two-buttons: fix it | ship it",
        f"2. Bob: +2 (👍 2 👎 0) · #{meme_id(second)} drake-hotline-bling: three | four",
        f"2. Alice Liddell: +2 (👍 2 👎 0) · #{meme_id(first)} drake-hotline-bling: one | two",
    ]
    # The memes themselves, sent again by file_id as one album: nothing rendered or uploaded.
    assert album.params["reply_parameters"]["message_id"] == command["message_id"]
    assert album.params["media"] == [
        {
            "type": "photo",
            "media": file_id(server, third),
            "caption": f"1. Alice Liddell · +2 · #{meme_id(third)}",
        },
        {"type": "photo", "media": file_id(server, second), "caption": f"2. Bob · +2 · #{meme_id(second)}"},
        {
            "type": "photo",
            "media": file_id(server, first),
            "caption": f"2. Alice Liddell · +2 · #{meme_id(first)}",
        },
    ]
    assert not album.files and len(server.sent("sendPhoto")) == rendered
    # The name kept is the display name Telegram showed (first and last name), not an id.
    assert (await harness.service.storage.get_meme(meme_id(third))).author_name == "Alice Liddell"


async def test_leaderboard_periods_week_month_and_all_and_a_period_it_does_not_know(harness: Harness):
    server = harness.server
    server.name_user(ALICE, "Alice")
    server.name_user(BOB, "Bob")
    fresh = await post_meme(harness, "/caption drake made | today", ALICE)
    last_month = await post_meme(harness, "/caption drake made | ten days ago", BOB)
    long_ago = await post_meme(harness, "/caption drake made | in spring", ALICE)
    await vote(server, fresh, 1, BOB)
    await vote(server, last_month, 1, ALICE, CAROL)
    await vote(server, long_ago, 1, BOB, CAROL, DAVE)
    backdate(harness.config, meme_id(last_month), 10)
    backdate(harness.config, meme_id(long_ago), 60)

    week = await reply_to(server, "/top")
    assert week.splitlines()[1:] == [
        f"1. Alice: +1 (👍 1 👎 0) · #{meme_id(fresh)} drake-hotline-bling: made | today"
    ]
    again = (await server.wait_for("sendPhoto", 4))[-1]  # one meme: a photo by file_id, not an album
    assert again.params["photo"] == file_id(server, fresh) and not again.files
    assert again.params["caption"] == f"1. Alice · +1 · #{meme_id(fresh)}"

    month = await reply_to(server, "/top month")
    assert month.splitlines()[0] == "🏆 Best memes here, the last 30 days:"
    assert [line.split(" · ")[1].split()[0] for line in month.splitlines()[1:]] == [
        f"#{meme_id(last_month)}",
        f"#{meme_id(fresh)}",
    ]
    every = await reply_to(server, "/top ALL")
    assert every.splitlines()[0] == "🏆 Best memes here, all time:"
    assert [line[:2] for line in every.splitlines()[1:]] == ["1.", "2.", "3."]
    assert f"#{meme_id(long_ago)} " in every.splitlines()[1]
    albums = await server.wait_for("sendMediaGroup", 2)
    assert [len(a.params["media"]) for a in albums] == [2, 3]

    assert await reply_to(server, "/top year") == (
        'There\'s no "/top year": try /top week, /top month or /top all'
    )
    empty = await reply_to(server, "/top", chat_id=OTHER_GROUP)
    assert empty.startswith("No memes here from the last 7 days with more 👍 than 👎 yet.")
    assert "/top all" in empty
    await asyncio.sleep(0.2)
    assert len(server.sent("sendPhoto")) == 4 and len(server.sent("sendMediaGroup")) == 2


async def test_leaderboard_shows_memes_whose_message_was_deleted_and_survives_a_stale_file_id(
    harness: Harness,
):
    server = harness.server
    kept = await post_meme(harness, "/caption drake still | here", ALICE)
    deleted = await post_meme(harness, "/caption drake deleted | by an admin", BOB)
    await vote(server, kept, 1, BOB)
    await vote(server, deleted, 1, ALICE, CAROL)
    files = [file_id(server, deleted), file_id(server, kept)]
    server.delete_message(GROUP, server.message_of(deleted)["message_id"])  # the bot is not told

    listing = await reply_to(server, "/top")
    assert (
        f"#{meme_id(deleted)} " in listing.splitlines()[1] and f"#{meme_id(kept)} " in listing.splitlines()[2]
    )
    (album,) = await server.wait_for("sendMediaGroup")  # a file_id outlives its message
    assert [item["media"] for item in album.params["media"]] == files

    # A file_id Telegram no longer takes (say the bot's token changed): the list still comes.
    conn = sqlite3.connect(harness.config.database_path)
    with conn:
        conn.execute("UPDATE memes SET media_ref = 'no-such-file' WHERE id = ?", (meme_id(kept),))
    conn.close()
    again = await reply_to(server, "/top")
    assert again == listing
    assert await reply_to(server, "/help") == HELP  # and the bot carries on, with no error reply
    assert len(server.sent("sendMediaGroup")) == 1
    assert not any("went wrong" in text for text in replies(server))


async def test_forget_by_reply_or_number_removes_the_meme_from_top_history_and_export(
    harness: Harness, tmp_path: Path
):
    server = harness.server
    by_reply = await post_meme(harness, "/caption drake forget | me", ALICE)
    by_number = await post_meme(harness, "/caption drake me | too", ALICE)
    bobs = await post_meme(harness, "/caption drake bob | stays", BOB)
    for photo in (by_reply, by_number, bobs):
        await vote(server, photo, 1, CAROL)
    assert len((await reply_to(server, "/top")).splitlines()) == 4

    message = server.message_of(by_reply)
    done = await reply_to(server, "/forget", reply_to_message=message)
    assert done == (
        f"Forgotten: meme #{meme_id(by_reply)} is gone from /history, /top and the exports, votes and all."
    )
    (deleted,) = server.sent("deleteMessage")
    assert deleted.params["message_id"] == str(message["message_id"])  # the bot took its message down
    assert (GROUP, message["message_id"]) not in server.messages

    # Older than 48 hours: Telegram won't let the bot delete it, so its buttons go and the reply says so.
    old = server.message_of(by_number)
    old["date"] -= 3 * 24 * 3600
    done = await reply_to(server, f"/forget #{meme_id(by_number)}")
    assert done.startswith(f"Forgotten: meme #{meme_id(by_number)} is gone") and "admins can" in done
    (edit,) = server.sent("editMessageReplyMarkup", GROUP)[-1:]
    assert edit.params["message_id"] == str(old["message_id"]) and "reply_markup" not in old

    assert "haven't made any memes" in await reply_to(server, "/history")
    top = (await reply_to(server, "/top")).splitlines()
    assert len(top) == 2 and f"#{meme_id(bobs)} " in top[1]
    storage = harness.service.storage
    assert (
        await storage.get_meme(meme_id(by_reply)) is None
        and await storage.get_meme(meme_id(by_number)) is None
    )
    assert (await storage.stats()).ratings == 1  # their votes went with them
    export = tmp_path / "rated.jsonl"
    assert await export_memes(storage, export, "jsonl", progress=False) == 1
    assert "bob" in export.read_text() and "forget" not in export.read_text()

    # In a private chat, where the chat is stored only as a hash, a reply finds the meme too.
    private = await post_meme(harness, "/caption drake just | us", ALICE, chat_id=ALICE)
    server.send_text("/forget", chat_id=ALICE, user_id=ALICE, reply_to_message=server.message_of(private))
    (answer,) = await server.wait_for("sendMessage", where=lambda call: call.chat_id == ALICE)
    assert server.sent("deleteMessage")[-1].chat_id == ALICE
    assert answer.params["text"].startswith(f"Forgotten: meme #{meme_id(private)}")


async def test_forget_refuses_someone_elses_meme_and_says_what_to_type(harness: Harness):
    server = harness.server
    alices = await post_meme(harness, "/caption drake alice | made this", ALICE)
    refusal = f"Meme #{meme_id(alices)} isn't yours: only the person who made it can forget it."
    assert await reply_to(server, "/forget", BOB, reply_to_message=server.message_of(alices)) == refusal
    assert await reply_to(server, f"/forget {meme_id(alices)}", BOB) == refusal

    how = "Reply to your meme with /forget, or give its number from /history, e.g. /forget 12"
    assert await reply_to(server, "/forget abc") == f'"abc" isn\'t a meme number. {how}'
    assert await reply_to(server, "/forget 99999999999999999999999") == (
        f'"99999999999999999999999" isn\'t a meme number. {how}'
    )
    assert await reply_to(server, "/forget") == f"Which meme? {how}"
    assert (
        await reply_to(server, "/forget 999")
        == "There's no meme #999. /history lists yours with their numbers."
    )
    chatter = server.send_text("just chatting", user_id=BOB)
    not_a_meme = await reply_to(server, "/forget", reply_to_message=chatter)
    assert not_a_meme.startswith("That message isn't one of my memes.")
    assert not server.sent("deleteMessage")
    assert await harness.service.storage.get_meme(meme_id(alices)) is not None
