"""Several bot processes on one PostgreSQL database, as an operator scales the bot out.

Each process is `memebot run` itself, a real subprocess, configured like an operator would:
the same `[storage] url` and user-hash key, its own front door to the platform. Here that is
one fake Telegram server per process, both playing the same group: what a deployment gets when
a load balancer spreads one bot's webhook updates over several processes (or Discord hands
each process its own shards). Nothing is shared between the processes but the database, so
whatever the test sees agree across them went through PostgreSQL.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from bot.storage import Score, Storage
from common.config import ENV_OVERRIDES
from fakes.caption_model import write_untrained_checkpoint
from fakes.telegram_server import GROUP_ID, Call, FakeTelegramServer
from tests.helpers.postgres import free_port

pytestmark = pytest.mark.timeout(150)

HASH_KEY = "two-process-test-key"
ALICE, ADMIN = 501, 503
VOTERS = range(1000, 1040)  # 40 users, half pressing 👍 in each process
TWICE = 2000  # one user whose 👍 reaches both processes at once: a vote and its withdrawal
WEBHOOK_SECRET = "many-processes_secret"


def write_config(
    path: Path, server: FakeTelegramServer, database_url: str, checkpoint: Path, telegram: str = ""
) -> Path:
    path.write_text(
        f"""
[telegram]
enabled = true
api_url = "{server.base_url}"
file_url = "{server.file_url}"
poll_timeout_s = 1.0
{telegram}

[storage]
url = "{database_url}"
user_hash_key = "{HASH_KEY}"

[model]
checkpoint = "{checkpoint}"
device = "cpu"
threads = 1

[generation]
method = "greedy"
max_length = 20

[limits]
user_burst = 100
chat_burst = 100
"""
    )
    return path


def operator_env(**extra: str) -> dict[str, str]:
    """This environment without memebot overrides (they would beat the test's config file)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return {**env, **extra}


@asynccontextmanager
async def memebot_run(
    config: Path, token: str, log: Path, **env: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`memebot run --config CONFIG`, stopped with SIGTERM (as a service manager does) at the end;
    its stderr goes to `log`, so a chatty process can never block on a full pipe."""
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            "--config",
            str(config),
            "run",
            env=operator_env(TELEGRAM_TOKEN=token, **env),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            cwd=Path(__file__).resolve().parent.parent,
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "Traceback" not in text, text
    assert WEBHOOK_SECRET not in text


def meme_id(call: Call) -> int:
    """The meme id carried by the 👍 button of a sent meme."""
    return int(call.keyboard[0][0]["callback_data"].split(":")[1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("model") / "untrained.pt")


async def test_two_processes_share_one_postgres_database(tmp_path: Path, checkpoint: Path, postgres_url: str):
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(FakeTelegramServer())
        two = await stack.enter_async_context(FakeTelegramServer())
        for n, server in enumerate((one, two), 1):
            config = write_config(tmp_path / f"config{n}.toml", server, postgres_url, checkpoint)
            await stack.enter_async_context(memebot_run(config, server.token, tmp_path / f"bot{n}.log"))
        # Both start at once on the empty database: one creates the tables, the other waits for it.
        await asyncio.gather(*(s.wait_for("setMyCommands", timeout=60) for s in (one, two)))

        # A meme made by process two, with the configured method.
        two.send_text("/meme drake", user_id=ALICE)
        (first,) = await two.wait_for("sendPhoto", timeout=30)
        meme = meme_id(first)
        message = two.message_of(first)
        # The same message in the same group, as process one is shown it.
        one.messages[(message["chat"]["id"], message["message_id"])] = copy.deepcopy(message)

        # 👍 from 40 users at once, every other one through each process, and one user's 👍
        # reaching both processes at the same moment.
        data = f"v:{meme}:1"
        for user in VOTERS:
            (one if user % 2 else two).press(message, data, user_id=user)
        one.press(message, data, user_id=TWICE)
        two.press(message, data, user_id=TWICE)
        half = len(VOTERS) // 2 + 1
        answers = await asyncio.gather(
            *(s.wait_for("answerCallbackQuery", half, timeout=30) for s in (one, two))
        )
        # Each press answered with the counts it left (no error alert), in both processes.
        assert all(a.params["text"].startswith("👍 ") for calls in answers for a in calls)

        # An admin changes the group's method through process one ...
        one.set_member(GROUP_ID, ADMIN, "administrator")
        one.send_text("/settings method sample", user_id=ADMIN)
        (saved,) = await one.wait_for("sendMessage", where=lambda c: "Saved" in c.params["text"], timeout=20)
        assert "method: sample" in saved.params["text"]
        # ... and process two's next meme in that group uses it.
        two.send_text("/meme drake", user_id=ALICE)
        (_, second) = await two.wait_for("sendPhoto", 2, timeout=30)

    async with await Storage.open(postgres_url, HASH_KEY) as storage:
        # Every vote counted once; the double press was a vote and its withdrawal, whichever came first.
        assert await storage.score(meme) == Score(up=len(VOTERS), down=0)
        assert (await storage.get_meme(meme)).method == "greedy"
        assert (await storage.get_meme(meme_id(second))).method == "sample"


async def test_two_processes_behind_one_telegram_webhook_on_one_postgres_database(
    tmp_path: Path, checkpoint: Path, postgres_url: str
):
    """The deployment webhook mode is for: one bot, one webhook URL, a reverse proxy handing
    Telegram's POSTs to two processes in turn (the fake plays Telegram and the proxy)."""
    ports = [free_port(), free_port()]
    async with FakeTelegramServer() as server:
        server.webhook_proxy = [f"http://127.0.0.1:{port}" for port in ports]
        async with AsyncExitStack() as stack:
            webhook = 'webhook_url = "https://bot.example.test/telegram"'
            for n, port in enumerate(ports, 1):
                path = tmp_path / f"config{n}.toml"
                config = write_config(path, server, postgres_url, checkpoint, webhook)
                env = {
                    "TELEGRAM_WEBHOOK_LISTEN": f"127.0.0.1:{port}",
                    "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
                }
                log = tmp_path / f"bot{n}.log"
                await stack.enter_async_context(memebot_run(config, server.token, log, **env))
            await server.wait_for("setWebhook", 2, timeout=60)  # each process sets the same webhook
            await server.wait_for("setMyCommands", 2, timeout=60)
            assert server.webhook == {
                "url": "https://bot.example.test/telegram",
                "secret_token": WEBHOOK_SECRET,
            }

            server.send_text("/meme drake", user_id=ALICE)
            (first,) = await server.wait_for("sendPhoto", timeout=30)
            meme, message = meme_id(first), server.message_of(first)
            # 👍 from 40 users and a double press, posted at once, taken by the two in turn.
            for user in [*VOTERS, TWICE, TWICE]:
                server.press(message, f"v:{meme}:1", user_id=user)
            answers = await server.wait_for("answerCallbackQuery", len(VOTERS) + 2, timeout=30)
            assert all(a.params["text"].startswith("👍 ") for a in answers)

            server.set_member(GROUP_ID, ADMIN, "administrator")
            settings_update = server.send_text("/settings method sample", user_id=ADMIN)
            await server.wait_for("sendMessage", where=lambda c: "Saved" in c.params["text"], timeout=20)
            meme_update = server.send_text("/meme drake", user_id=ALICE)
            (_, second) = await server.wait_for("sendPhoto", 2, timeout=30)

        assert {status for _, _, status in server.webhook_posts} == {200}
        # Both processes took some.
        assert {where for _, where, _ in server.webhook_posts} == set(server.webhook_proxy)
        # The setting was changed in one process and the next meme made by the other.
        served_by = {
            update["message"]["message_id"]: where
            for update, where, _ in server.webhook_posts
            if "message" in update
        }
        assert served_by[settings_update["message_id"]] != served_by[meme_update["message_id"]]

    async with await Storage.open(postgres_url, HASH_KEY) as storage:
        assert await storage.score(meme) == Score(up=len(VOTERS), down=0)
        assert (await storage.get_meme(meme)).method == "greedy"
        assert (await storage.get_meme(meme_id(second))).method == "sample"
