"""`memebot db stats|check|backup`: the database, looked after while the bot may be running."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bot.storage import Storage, StorageError
from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="database maintenance: stats, check, backup")
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    stats = actions.add_parser("stats", help="row counts, votes, schema version, file size")
    stats.set_defaults(handler=run_stats)
    check = actions.add_parser("check", help="SQLite's integrity check: is the file sound?")
    check.set_defaults(handler=run_check)
    backup = actions.add_parser("backup", help="copy the database safely, even while the bot runs")
    backup.add_argument("path", type=Path, help="where to write the copy")
    backup.add_argument("--force", action="store_true", help="replace an existing file at PATH")
    backup.set_defaults(handler=run_backup)


def fail(message: str) -> int:
    print(f"memebot: {message}", file=sys.stderr)
    return 1


async def open_existing(config: Config) -> Storage:
    # These tools read an existing database; creating an empty one would hide a wrong path.
    return await Storage.open(config.database_path, config.storage.user_hash_key, create=False)


def _size(n_bytes: int) -> str:
    if n_bytes < 1024:
        return f"{n_bytes} B"
    value = float(n_bytes)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def run_stats(config: Config, args: argparse.Namespace) -> int:
    async def stats() -> int:
        async with await open_existing(config) as storage:
            s = await storage.stats()
        lines = [
            ("database", str(s.path)),
            ("schema version", str(s.schema_version)),
            ("memes", str(s.memes)),
            ("ratings", str(s.ratings)),
            ("up votes", str(s.up)),
            ("down votes", str(s.down)),
            ("settings rows", str(s.settings)),
            ("file size", _size(s.file_bytes)),
        ]
        width = max(len(name) for name, _ in lines)
        for name, value in lines:
            print(f"{name:<{width}}  {value}")
        return 0

    try:
        return asyncio.run(stats())
    except StorageError as exc:
        return fail(str(exc))


def run_check(config: Config, args: argparse.Namespace) -> int:
    async def check() -> int:
        async with await open_existing(config) as storage:
            problems = [line for line in await storage.integrity_check() if line != "ok"]
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return fail(
                f"{config.database_path} is damaged ({len(problems)} problem(s) above): restore a "
                "`memebot db backup`, or copy what is readable with sqlite3's .recover"
            )
        print(f"{config.database_path}: ok")
        return 0

    try:
        return asyncio.run(check())
    except StorageError as exc:
        return fail(str(exc))


def run_backup(config: Config, args: argparse.Namespace) -> int:
    dest: Path = args.path
    if dest.exists() and not args.force:
        return fail(f"{dest} already exists; pass --force to replace it or choose another path")

    async def backup() -> int:
        async with await open_existing(config) as storage:
            await storage.backup(dest)
        print(f"backed up {config.database_path} to {dest}", file=sys.stderr)
        return 0

    try:
        return asyncio.run(backup())
    except StorageError as exc:
        return fail(str(exc))
