"""`memebot run` (the chat bots) and `memebot chat` (the bot in this terminal)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from pathlib import Path

from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="run the chat bots enabled in the config (Telegram, Discord) until Ctrl+C or SIGTERM",
        description="Tokens come from the environment: TELEGRAM_TOKEN, DISCORD_TOKEN.",
    )
    run.set_defaults(handler=run_command)
    chat = sub.add_parser("chat", help="make memes in this terminal: no chat platform or token needed")
    chat.add_argument("-o", "--output", type=Path, help="folder for the images (default: [paths] output_dir)")
    chat.set_defaults(handler=chat_command)


def _startup_errors() -> tuple[type[Exception], ...]:
    from bot.frontend import StartError
    from bot.render import RenderError
    from bot.storage import StorageError
    from common.catalog import CatalogError

    return (StartError, CatalogError, RenderError, StorageError)


def run_command(config: Config, args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Bot API request otherwise
    from bot.app import run_bot

    try:
        asyncio.run(run_bot(config))
    except _startup_errors() as exc:
        print(f"memebot run: {exc}", file=sys.stderr)
        return 1
    return 0


def chat_command(config: Config, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A folder given on the command line is relative to where the command runs, like any path argument.
    output = args.output.resolve() if args.output else config.resolve(config.paths.output_dir)
    try:
        asyncio.run(_chat(config, output))
    except _startup_errors() as exc:
        print(f"memebot chat: {exc}", file=sys.stderr)
        return 1
    return 0


async def _chat(config: Config, output: Path) -> None:
    from bot.app import open_service
    from bot.console_app import ConsoleFrontEnd

    async with open_service(config) as service:
        console = ConsoleFrontEnd(service, output, stdin=sys.stdin, stdout=sys.stdout, user=_local_user())
        await console.run()


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "local"
