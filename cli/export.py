"""`memebot export`: rated memes as JSONL or CSV, for fine-tuning (`memebot train --finetune`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime

from bot.export import FORMATS, ExportError, choose_format, export_memes, parse_since
from bot.storage import MemeFilter, StorageError
from cli.database import fail, open_existing
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


def run_export(config: Config, args: argparse.Namespace) -> int:
    async def export() -> int:
        fmt = choose_format(args.output, args.format)
        where = MemeFilter(min_score=args.min_score, since=args.since, template=args.template)
        async with await open_existing(config) as storage:
            count = await export_memes(storage, args.output, fmt, where, progress=not args.no_progress)
        target = "stdout" if args.output == "-" else args.output
        print(f"exported {count} rated memes to {target} ({fmt})", file=sys.stderr)
        return 0

    try:
        return asyncio.run(export())
    except (StorageError, ExportError) as exc:
        return fail(str(exc))
