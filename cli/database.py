"""`memebot db stats|check|backup|migrate`: the database, looked after while the bot may be running."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bot.storage import Storage, StorageError
from common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="database maintenance: stats, check, backup, migrate")
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    stats = actions.add_parser("stats", help="row counts, votes, schema version, size")
    stats.set_defaults(handler=run_stats)
    check = actions.add_parser(
        "check", help="is the database sound? (SQLite's integrity check; PostgreSQL: every row read back)"
    )
    check.set_defaults(handler=run_check)
    backup = actions.add_parser(
        "backup", help="copy the SQLite file safely, even while the bot runs (PostgreSQL: pg_dump)"
    )
    backup.add_argument("path", type=Path, help="where to write the copy")
    backup.add_argument("--force", action="store_true", help="replace an existing file at PATH")
    backup.set_defaults(handler=run_backup)
    migrate = actions.add_parser(
        "migrate", help="copy the SQLite database into PostgreSQL (an empty database), row counts checked"
    )
    migrate.add_argument(
        "--to",
        metavar="URL",
        help="the target, postgresql://user:password@host/database (default: [storage] url, or "
        "MEMEBOT_DATABASE_URL, which keeps the password off the command line)",
    )
    migrate.add_argument(
        "--from",
        dest="source",
        metavar="PATH",
        help="the database to copy (default: [storage] database, the SQLite file, whatever url says)",
    )
    migrate.set_defaults(handler=run_migrate)


def fail(message: str) -> int:
    print(f"memebot: {message}", file=sys.stderr)
    return 1


async def open_existing(config: Config) -> Storage:
    # These tools read an existing database; creating an empty one would hide a wrong path.
    return await Storage.open(config.database_location, config.storage.user_hash_key, create=False)


def _size(n_bytes: int) -> str:
    if n_bytes < 1024:
        return f"{n_bytes} B"
    value = float(n_bytes)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _print_table(lines: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name:<{width}}  {value}")


def run_stats(config: Config, args: argparse.Namespace) -> int:
    async def stats() -> int:
        async with await open_existing(config) as storage:
            s = await storage.stats()
        _print_table(
            [
                ("database", s.location),
                ("engine", s.engine),
                ("schema version", str(s.schema_version)),
                ("memes", str(s.memes)),
                ("ratings", str(s.ratings)),
                ("up votes", str(s.up)),
                ("down votes", str(s.down)),
                ("settings rows", str(s.settings)),
                ("file size" if s.engine == "sqlite" else "size on server", _size(s.file_bytes)),
            ]
        )
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
            remedy = (
                "restore a `memebot db backup`, or copy what is readable with sqlite3's .recover"
                if storage.engine == "sqlite"
                else "restore a pg_dump, and run pg_amcheck to see which files are hit"
            )
            return fail(f"{storage.location} is damaged ({len(problems)} problem(s) above): {remedy}")
        if storage.engine == "sqlite":
            print(f"{storage.location}: ok")
        else:
            print(f"{storage.location}: ok (every row read back; pg_amcheck checks the server's files)")
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
        print(f"backed up {storage.location} to {dest}", file=sys.stderr)
        return 0

    try:
        return asyncio.run(backup())
    except StorageError as exc:
        return fail(str(exc))


def run_migrate(config: Config, args: argparse.Namespace) -> int:
    target = args.to or config.storage.url
    if not target:
        return fail("give the target database: --to postgresql://..., or set MEMEBOT_DATABASE_URL")
    source = args.source or config.database_path
    key = config.storage.user_hash_key
    show_progress = sys.stderr.isatty()

    def progress(table: str, rows: int) -> None:
        if show_progress:
            print(f"\rcopying {table}: {rows} rows", end="", file=sys.stderr, flush=True)

    async def migrate() -> int:
        async with await Storage.open(source, key, create=False) as src:
            async with await Storage.open(target, key) as dst:
                if dst.location == src.location:
                    return fail(f"{src.location} is both source and target")
                # The same key on both sides: the rows carry user hashes made with it.
                await src.copy_to(dst, progress=progress)
                if show_progress:
                    print(file=sys.stderr)
                counts = await src.row_counts(), await dst.row_counts()
        rows = [(table, str(counts[0][table]), str(counts[1][table])) for table in counts[0]]
        wide = [max(len(r[i]) for r in [("table", "source", "target"), *rows]) for i in range(3)]
        for table, n_source, n_target in [("table", "source", "target"), *rows]:
            verdict = "" if table == "table" else "ok" if n_source == n_target else "MISMATCH"
            print(f"{table:<{wide[0]}}  {n_source:>{wide[1]}}  {n_target:>{wide[2]}}  {verdict}".rstrip())
        if counts[0] != counts[1]:
            return fail(
                "the row counts differ (was the bot writing to the source? stop it, empty the target "
                "and migrate again)"
            )
        print(f"copied {src.location} to {dst.location}: every count matches", file=sys.stderr)
        return 0

    try:
        return asyncio.run(migrate())
    except StorageError as exc:
        return fail(str(exc))
