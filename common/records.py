"""The ratings export: the record format `memebot export` writes and `memebot train --finetune` reads.

One row per meme with at least one rating, carrying what a fine-tuning run needs (template slug,
caption boxes, votes, the model that wrote it) and nothing that identifies a user. `read_export`
reads either format (JSONL or CSV) back, so training code never touches the database.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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
