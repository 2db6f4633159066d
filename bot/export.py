"""Rated memes out of the database, as training data: JSONL or CSV (the record format is
`common/records.py`, which training reads without touching the database)."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from tqdm import tqdm

from bot.storage import MemeFilter, Storage, StoredMeme
from common.records import COLUMNS, FORMATS, ExportError, ExportRow


def parse_since(text: str) -> datetime:
    """A date or date-time for `--since`; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ExportError(
            f"cannot read {text!r} as a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def choose_format(output: str, explicit: str | None) -> str:
    """The explicit --format, else the output file's extension, else JSONL."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise ExportError(f"unknown export format {explicit!r} (use {' or '.join(FORMATS)})")
        return explicit
    return "csv" if output.lower().endswith(".csv") else "jsonl"


def _row_writer(out: IO[str], fmt: str) -> Callable[[ExportRow], None]:
    """A function writing one row to `out` in `fmt` (the CSV header is written now)."""
    if fmt == "jsonl":
        return lambda row: out.write(json.dumps(row.to_record(), ensure_ascii=False) + "\n")
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()

    def write_csv(row: ExportRow) -> None:
        record = row.to_record()
        record["boxes"] = json.dumps(record["boxes"], ensure_ascii=False)
        writer.writerow(record)

    return write_csv


async def _stream(storage: Storage, where: MemeFilter, out: IO[str], fmt: str, progress: bool) -> int:
    write = _row_writer(out, fmt)
    count = 0
    total = await storage.count_rated(where)
    with tqdm(total=total, unit="meme", desc="export", file=sys.stderr, disable=not progress) as bar:
        async for meme in storage.rated_memes(where):
            write(export_row(meme))
            count += 1
            bar.update(1)
    return count


async def export_memes(
    storage: Storage,
    output: str | Path,
    fmt: str,
    where: MemeFilter | None = None,
    *,
    progress: bool = True,
) -> int:
    """Write the rated memes matching `where` to `output` ("-" = stdout); returns how many.

    A file is written beside its final name and renamed at the end, so an interrupted
    export never leaves a truncated file that training would read as complete.
    """
    where = where or MemeFilter()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (use {' or '.join(FORMATS)})")
    if str(output) == "-":
        count = await _stream(storage, where, sys.stdout, fmt, progress)
        sys.stdout.flush()
        return count
    path = Path(output)
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give a file name for the export")
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "w", encoding="utf-8", newline="") as out:
            count = await _stream(storage, where, out, fmt, progress)
        os.replace(partial, path)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return count


def export_row(meme: StoredMeme) -> ExportRow:
    return ExportRow(
        template=meme.template,
        boxes=list(meme.boxes),
        up=meme.up,
        down=meme.down,
        score=meme.up - meme.down,
        model_id=meme.model_id,
        created_at=meme.created_at,
    )
