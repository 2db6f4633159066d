"""`memebot export` (rated memes for fine-tuning) and `memebot db stats|backup`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path

from bot.export import FORMATS, ExportError, choose_format, export_memes, parse_since
from bot.storage import MemeFilter, Storage, StorageError
from common.config import Config


def _since(text: str) -> datetime:
    try:
        return parse_since(text)
    except ExportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export",
        help="write rated memes as JSONL or CSV for fine-tuning",
        description="One row per meme with at least one rating: template, boxes, up/down votes, "
        "score, model id, created_at. No user ids are exported.",
    )
    export.add_argument("--min-score", type=int, help="keep memes with score (up - down) at least this")
    export.add_argument("--since", type=_since, help="keep memes made at or after this date (UTC)")
    export.add_argument("--template", help="keep one template (its slug, e.g. change-my-mind)")
    export.add_argument("--format", choices=FORMATS, help="default: from the file extension, else jsonl")
    export.add_argument("-o", "--output", required=True, help="output file, or - for stdout")
    export.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    export.set_defaults(handler=run_export)

    db = sub.add_parser("db", help="database maintenance: stats, backup")
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    stats = actions.add_parser("stats", help="row counts, votes, schema version, file size")
    stats.set_defaults(handler=run_stats)
    backup = actions.add_parser("backup", help="copy the database safely, even while the bot runs")
    backup.add_argument("path", type=Path, help="where to write the copy")
    backup.add_argument("--force", action="store_true", help="replace an existing file at PATH")
    backup.set_defaults(handler=run_backup)


def _fail(message: str) -> int:
    print(f"memebot: {message}", file=sys.stderr)
    return 1


async def _open(config: Config) -> Storage:
    # These tools read an existing database; creating an empty one would hide a wrong path.
    return await Storage.open(config.database_path, config.storage.user_hash_key, create=False)


def run_export(config: Config, args: argparse.Namespace) -> int:
    async def export() -> int:
        fmt = choose_format(args.output, args.format)
        where = MemeFilter(min_score=args.min_score, since=args.since, template=args.template)
        async with await _open(config) as storage:
            count = await export_memes(storage, args.output, fmt, where, progress=not args.no_progress)
        target = "stdout" if args.output == "-" else args.output
        print(f"exported {count} rated memes to {target} ({fmt})", file=sys.stderr)
        return 0

    try:
        return asyncio.run(export())
    except (StorageError, ExportError) as exc:
        return _fail(str(exc))


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
        async with await _open(config) as storage:
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
        return _fail(str(exc))


def run_backup(config: Config, args: argparse.Namespace) -> int:
    dest: Path = args.path
    if dest.exists() and not args.force:
        return _fail(f"{dest} already exists; pass --force to replace it or choose another path")

    async def backup() -> int:
        async with await _open(config) as storage:
            await storage.backup(dest)
        print(f"backed up {config.database_path} to {dest}", file=sys.stderr)
        return 0

    try:
        return asyncio.run(backup())
    except StorageError as exc:
        return _fail(str(exc))
