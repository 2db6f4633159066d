"""Builds the bot's shared pieces from the config and runs the front ends in one process.

`open_service` makes the one catalog, renderer, model pool, database and MemeService that
every front end shares; `run_bot` starts the configured chat front ends on it and waits for
SIGINT/SIGTERM, then shuts everything down in order (front ends first, so no new work
arrives, then the pool, then the database).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bot.frontend import FrontEnd, StartError
from bot.recognize import TemplateRecognizer
from bot.redact import redacted_logs
from bot.render import Renderer
from bot.service import MemeService
from bot.settings import check_config_defaults
from bot.storage import Storage
from bot.storage_engines import url_passwords
from common.catalog import load_catalog
from common.config import Config
from model.pool import ModelPool, PoolError

if TYPE_CHECKING:
    from model.remote import RemoteModel  # aiohttp: loaded only where [model] endpoint is set

logger = logging.getLogger(__name__)

NO_MODEL = (
    "no model yet: {path} does not exist. Run `memebot train` or pull the shipped model; "
    "until then only hand-written captions (/caption) work."
)


def warn(text: str) -> None:
    print(f"memebot: {text}", file=sys.stderr, flush=True)


def usable_draft(config: Config, notice: Callable[[str], None] = warn) -> Path | None:
    """The speculative decoding table to load, if it is on and present: it only makes captions
    come faster, so a missing file is a notice, not a reason to stop."""
    draft = config.draft_path
    if draft is not None and not draft.exists():
        notice(f"no draft table at {draft}: decoding without speculation (`memebot draft` builds one)")
        return None
    return draft


def usable_lexicon(config: Config, notice: Callable[[str], None] = warn) -> Path | None:
    """The word lexicon to load, if present: without it decoding still runs, only without
    the lexicon rule (requests ask for it with [generation] lexicon, a server setting)."""
    path = config.lexicon_path
    if not path.exists():
        notice(f"no word lexicon at {path}: decoding may write made-up words (`memebot lexicon` builds it)")
        return None
    return path


async def start_pool(config: Config, notice: Callable[[str], None] = warn) -> ModelPool | RemoteModel | None:
    """The model pool, started; None (with a notice) when no checkpoint is installed. With
    [model] endpoint set, a client of that model service instead: no model loads here."""
    if config.model.endpoint:
        return await start_remote(config)
    checkpoint = config.checkpoint_path
    if not checkpoint.exists():
        notice(NO_MODEL.format(path=checkpoint))
        return None
    pool = ModelPool.from_config(
        config.model,
        checkpoint,
        usable_draft(config, notice),
        config.kernel_dir,
        usable_lexicon(config, notice),
    )
    try:
        await pool.start()
    except Exception as exc:
        raise StartError(f"cannot load the model {checkpoint}: {exc}") from exc
    return pool


async def start_remote(config: Config) -> RemoteModel:
    """The client of the model service at [model] endpoint, connected; refuses to start, as
    for a model that cannot load, when the service does not answer."""
    from model.remote import RemoteModel

    client = RemoteModel.from_config(config.model)
    try:
        await client.start()
    except PoolError as exc:
        raise StartError(f"cannot reach the model service at {config.model.endpoint}: {exc}") from exc
    return client


@asynccontextmanager
async def open_service(
    config: Config, *, pool: ModelPool | RemoteModel | None = None, notice: Callable[[str], None] = warn
) -> AsyncIterator[MemeService]:
    """The shared core for one process. A started `pool` may be passed in (tests, benchmarks);
    otherwise one is started from the config."""
    check_config_defaults(config)
    catalog = load_catalog(config.catalog_path)
    renderer = Renderer(
        config.template_images_dir,
        max_side=config.render.max_side,
        fallback_fonts=[config.resolve(p) for p in config.render.fallback_fonts],
        uppercase=config.render.uppercase,
    )
    # Pictures users send are checked against the templates' fingerprints (cached: ~10 ms to load).
    recognizer = await asyncio.to_thread(
        TemplateRecognizer.build, catalog, config.template_images_dir, config.cache_dir
    )
    storage = await Storage.open(config.database_location, config.storage.user_hash_key)
    owns_pool = pool is None
    try:
        if owns_pool:
            pool = await start_pool(config, notice)
        yield MemeService(
            config=config,
            catalog=catalog,
            renderer=renderer,
            storage=storage,
            pool=pool,
            recognizer=recognizer,
        )
    finally:
        if owns_pool and pool is not None:
            await pool.close()
        await storage.close()


def check_front_ends(config: Config) -> None:
    """Refuse to start, before anything loads or connects, when nothing is enabled or a token is missing."""
    if not (config.telegram.enabled or config.discord.enabled):
        raise StartError(
            "nothing to run: enable [telegram] or [discord] in the config, or try `memebot chat`"
        )
    missing = []
    if config.telegram.enabled and not config.telegram.token:
        missing.append("Telegram is enabled but TELEGRAM_TOKEN is not set")
    if config.discord.enabled and not config.discord.token:
        missing.append("Discord is enabled but DISCORD_TOKEN is not set")
    if missing:
        raise StartError("; ".join(missing) + " (set it in the environment, or disable that front end)")


def build_front_ends(service: MemeService, config: Config) -> list[FrontEnd]:
    ends: list[FrontEnd] = []
    # Each library is imported only when its front end is enabled: both are slow to import.
    if config.telegram.enabled:
        from bot.telegram_app import TelegramFrontEnd

        ends.append(TelegramFrontEnd(service, config.telegram))
    if config.discord.enabled:
        from bot.discord_app import DiscordFrontEnd

        ends.append(DiscordFrontEnd(service, config.discord))
    return ends


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def run_bot(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run every enabled front end until `stop` is set (by default: on SIGINT or SIGTERM)."""
    if stop is None:
        stop = asyncio.Event()
        stop_on_signals(stop)
    check_front_ends(config)
    secrets = [config.telegram.token, config.telegram.webhook_secret, config.discord.token]
    secrets.append(config.storage.user_hash_key)
    secrets += url_passwords(config.storage.url)  # a driver's error may quote the URL it was given
    secrets += url_passwords(config.model.endpoint)  # the client logs and words errors with its URL
    with redacted_logs(secrets):
        await _serve(config, stop)


async def _serve(config: Config, stop: asyncio.Event) -> None:
    started: list[FrontEnd] = []
    async with open_service(config) as service:
        ends = build_front_ends(service, config)
        try:
            for end in ends:
                await end.start()
                started.append(end)
            names = ", ".join(type(end).__name__.removesuffix("FrontEnd") for end in started)
            warn(f"running ({names}); stop with Ctrl+C")
            await stop.wait()
            warn("stopping")
        finally:
            for end in reversed(started):
                try:
                    await end.close()
                except Exception:
                    logger.exception("closing %s failed", type(end).__name__)
