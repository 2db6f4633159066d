"""Rated memes out of the database, as training data: JSONL or CSV, and back in.

The export format is the contract with `training/`: one row per meme with at least one
rating, carrying what a fine-tuning run needs (template slug, caption boxes, votes, the
model that wrote it) and nothing that identifies a user. `read_export` reads either
format back, so training code never touches the database.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from bot.storage import MemeFilter, Storage, StoredMeme

FORMATS = ("jsonl", "csv")
COLUMNS = ("template", "boxes", "up", "down", "score", "model_id", "created_at")


class ExportError(ValueError):
    """Bad export arguments or an unreadable export file; the message says what to fix."""


@dataclass(frozen=True)
class ExportRow:
    template: str  # catalog slug
    boxes: list[str]
    up: int
    down: int
    score: int  # up - down
    model_id: str
    created_at: datetime | None = None  # UTC; None only in files written without it

    @classmethod
    def from_meme(cls, meme: StoredMeme) -> ExportRow:
        return cls(
            template=meme.template,
            boxes=list(meme.boxes),
            up=meme.up,
            down=meme.down,
            score=meme.up - meme.down,
            model_id=meme.model_id,
            created_at=meme.created_at,
        )

    def to_record(self) -> dict[str, Any]:
        """A flat dict of plain values (boxes stay a list; CSV encodes it as JSON)."""
        created = self.created_at.isoformat() if self.created_at else None
        return {
            "template": self.template,
            "boxes": self.boxes,
            "up": self.up,
            "down": self.down,
            "score": self.score,
            "model_id": self.model_id,
            "created_at": created,
        }


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
            write(ExportRow.from_meme(meme))
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


def _row_from_record(record: dict[str, Any], where: str) -> ExportRow:
    try:
        boxes = record["boxes"]
        if isinstance(boxes, str):  # CSV keeps the list as JSON text
            boxes = json.loads(boxes)
        if not isinstance(boxes, list) or not all(isinstance(b, str) for b in boxes):
            raise ValueError("boxes must be a list of strings")
        up, down = int(record["up"]), int(record["down"])
        score = int(record["score"]) if record.get("score") not in (None, "") else up - down
        created = record.get("created_at")
        template, model_id = str(record["template"]), str(record["model_id"])
        return ExportRow(
            template=template,
            boxes=boxes,
            up=up,
            down=down,
            score=score,
            model_id=model_id,
            created_at=datetime.fromisoformat(created) if created else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        missing = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ExportError(f"{where}: not a memebot export row ({missing})") from None


def read_export(path: Path) -> list[ExportRow]:
    """Read an export file in either format (told apart by content, not by name)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read the export {path}: {exc}") from exc
    if text.lstrip().startswith("{"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ExportError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ExportError(f"{path}:{number}: expected a JSON object per line")
            rows.append(_row_from_record(record, f"{path}:{number}"))
        return rows
    if not text.strip():
        return []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = set(COLUMNS) - {"created_at"} - set(reader.fieldnames or ())
    if missing:
        raise ExportError(
            f"{path}: neither JSONL nor a memebot CSV export (header lacks {', '.join(sorted(missing))})"
        )
    # Line numbers count the header as line 1; a quoted box may span lines, so this is the record's end.
    return [_row_from_record(record, f"{path}:{reader.line_num}") for record in reader]
