"""Everything the bot remembers: memes, ratings and per-chat settings.

By default in one SQLite file; `[storage] url = "postgresql://..."` puts it on a PostgreSQL
server instead. The SQL here is written once for both; `bot/storage_engines.py` holds what
differs (placeholders, locking, the schema version, backup and checks). On SQLite, several
processes (the bot, `memebot db backup`, an export) can share the file: it runs in WAL mode
with a busy timeout, and every write transaction starts with BEGIN IMMEDIATE so two writers
queue for the lock instead of failing half-way. On PostgreSQL, a pool of connections runs
transactions side by side, and a read-then-write transaction locks what it changes first.

User ids never reach the file. They are stored as HMAC-SHA256 hashes keyed with
`storage.user_hash_key`, so an export (or a leaked database) cannot be joined back to
accounts, while the same user still maps to the same hash for ratings and history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from bot.settings import BadValue, check_value
from bot.storage_engines import (
    Engine,
    EngineError,
    Row,
    Session,
    SqliteOnly,
    is_postgres_url,
    open_engine,
    unusable,
)
from common.template import Box, ImageBytes, Layout, Template, is_upload_key

logger = logging.getLogger(__name__)
USER_HASH_HEX = 32  # 128 bits of the HMAC: collisions are negligible, rows stay short
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width UTC, so text order is time order

# MIGRATIONS[v] takes a database from schema version v to v + 1 (SQLite: `PRAGMA user_version`).
# A released entry is never edited: old databases replay every entry after their version.
# One list for both engines: a new PostgreSQL database replays all of it, SQLite's type words
# rewritten (bot/storage_engines.py, postgres_ddl) and SqliteOnly statements skipped, and ends
# with the same tables, columns and indices. New entries are written in SQL both engines take.
MIGRATIONS: tuple[tuple[str | SqliteOnly, ...], ...] = (
    (  # v1: memes, ratings, per-chat generation settings
        """CREATE TABLE memes (
            id INTEGER PRIMARY KEY,
            platform TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            user_hash TEXT NOT NULL,
            template TEXT NOT NULL,
            prefix TEXT NOT NULL DEFAULT '',
            boxes TEXT NOT NULL,
            method TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            model_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            message_id TEXT
        )""",
        """CREATE TABLE ratings (
            meme_id INTEGER NOT NULL REFERENCES memes (id) ON DELETE CASCADE,
            user_hash TEXT NOT NULL,
            value INTEGER NOT NULL CHECK (value IN (-1, 1)),
            rated_at TEXT NOT NULL,
            PRIMARY KEY (meme_id, user_hash)
        ) WITHOUT ROWID""",
        """CREATE TABLE settings (
            platform TEXT NOT NULL,
            scope_id TEXT NOT NULL,
            method TEXT,
            temperature REAL,
            beam_width INTEGER,
            max_length INTEGER,
            filter_enabled INTEGER,
            PRIMARY KEY (platform, scope_id)
        )""",
        "CREATE INDEX memes_by_user ON memes (platform, user_hash, id)",
    ),
    (  # v2: per-chat template allow-list and cooldown; indices for a chat's top memes and button presses
        "ALTER TABLE settings ADD COLUMN allowed_templates TEXT",
        "ALTER TABLE settings ADD COLUMN cooldown_s REAL",
        "CREATE INDEX memes_by_chat ON memes (platform, chat_id, id)",
        "CREATE INDEX memes_by_message ON memes (platform, chat_id, message_id) WHERE message_id IS NOT NULL",
    ),
    (  # v3: a chat's own meme rate limit
        "ALTER TABLE settings ADD COLUMN chat_rate_per_minute REAL",
    ),
    (  # v4: decoding's word lexicon on/off, best-of-N candidates
        "ALTER TABLE settings ADD COLUMN lexicon INTEGER",
        "ALTER TABLE settings ADD COLUMN best_of INTEGER",
    ),
    (  # v5: the pictures users made memes on, where their chat keeps them (a meme's template is
        # "upload:<sha256>"; without the picture kept, the hash is all that is stored)
        """CREATE TABLE pictures (
            slug TEXT PRIMARY KEY,
            data BLOB NOT NULL,
            name TEXT NOT NULL,
            boxes TEXT NOT NULL,
            band REAL NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        )""",
    ),
    (  # v6: a chat's settings as one JSON object {name: value} (bot/settings.py's table), so a new
        # setting needs no migration; the v1-v4 columns are copied into it, unset ones left out.
        """CREATE TABLE chat_settings (
            platform TEXT NOT NULL,
            scope_id TEXT NOT NULL,
            settings TEXT NOT NULL,
            PRIMARY KEY (platform, scope_id)
        )""",
        # json_patch drops the NULLs json_object writes for unset columns. SQLite only: a
        # PostgreSQL database starts at v7 with no v1-v5 settings rows, so there is nothing
        # to copy (and its JSON functions are spelt differently).
        SqliteOnly("""INSERT INTO chat_settings (platform, scope_id, settings)
        SELECT platform, scope_id, json_patch('{}', json_object(
            'method', method,
            'temperature', temperature,
            'beam_width', beam_width,
            'max_length', max_length,
            'filter_enabled', json(CASE WHEN filter_enabled IS NULL THEN NULL
                                        WHEN filter_enabled THEN 'true' ELSE 'false' END),
            'allowed_templates', CASE WHEN json_valid(allowed_templates) THEN json(allowed_templates) END,
            'cooldown_s', cooldown_s,
            'chat_rate_per_minute', chat_rate_per_minute,
            'lexicon', json(CASE WHEN lexicon IS NULL THEN NULL WHEN lexicon THEN 'true' ELSE 'false' END),
            'best_of', best_of
        )) FROM settings"""),
        "DELETE FROM chat_settings WHERE settings = '{}'",
        "DROP TABLE settings",
        "ALTER TABLE chat_settings RENAME TO settings",
    ),
    (  # v7: leaderboards and re-posting. scope_id: whose board a meme is on (a Discord server; else
        # the chat, so older memes are copied from chat_id: an old Discord meme lands under its
        # channel, where no /top looks). author_name: the display name its author had when making
        # it. media_ref: what shows its image again without rendering (Telegram: the photo's
        # file_id). message_deleted_at: when its message was found deleted (it leaves the board).
        "ALTER TABLE memes ADD COLUMN scope_id TEXT",
        "ALTER TABLE memes ADD COLUMN author_name TEXT",
        "ALTER TABLE memes ADD COLUMN media_ref TEXT",
        "ALTER TABLE memes ADD COLUMN message_deleted_at TEXT",
        "UPDATE memes SET scope_id = chat_id",
        "CREATE INDEX memes_by_scope ON memes (platform, scope_id, created_at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# What `Storage.copy_to` copies, parents first (a rating needs its meme): table -> (its columns,
# its key, which orders the copy). The schema version is not copied: the target has its own.
COPIED_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "memes": (
        (
            "id", "platform", "chat_id", "user_hash", "template", "prefix", "boxes", "method", "params",
            "model_id", "created_at", "message_id", "scope_id", "author_name", "media_ref",
            "message_deleted_at",
        ),
        ("id",),
    ),
    "ratings": (("meme_id", "user_hash", "value", "rated_at"), ("meme_id", "user_hash")),
    "settings": (("platform", "scope_id", "settings"), ("platform", "scope_id")),
    "pictures": (("slug", "data", "name", "boxes", "band", "created_at"), ("slug",)),
}  # fmt: skip


class StorageError(Exception):
    """The database cannot be used; the message says what to do about it."""


class InvalidValue(ValueError):
    """A value handed to storage has the wrong shape (a programming or parsing error upstream)."""


class UnknownMeme(LookupError):
    def __init__(self, meme_id: int) -> None:
        super().__init__(f"there is no meme with id {meme_id}")
        self.meme_id = meme_id


class NotAuthor(PermissionError):
    """Only a meme's author may do that to it."""

    def __init__(self, meme_id: int) -> None:
        super().__init__(f"meme {meme_id} was made by someone else")
        self.meme_id = meme_id


@dataclass(frozen=True)
class NewMeme:
    platform: str
    chat_id: str
    user_id: str  # raw user id in; stored only as a keyed hash
    template: Template  # stored by slug (a user's picture: by its SHA-256)
    prefix: str
    boxes: list[str]
    method: str
    params: dict
    model_id: str
    keep_picture: bool = False  # also store a user's picture itself (once), so 🔁 outlives a restart
    scope_id: str = ""  # whose leaderboard it is on (a Discord server); "" = its chat's
    # The author's display name as the platform showed it when the meme was made. Stored rather
    # than looked up: a lookup needs the raw user id, which is only ever stored as a keyed hash.
    author_name: str = ""


@dataclass(frozen=True)
class Score:
    up: int
    down: int

    @property
    def value(self) -> int:
        return self.up - self.down


@dataclass(frozen=True)
class StoredMeme:
    id: int
    platform: str
    chat_id: str
    user_hash: str
    template: str  # a catalog slug, or "upload:<sha256>" for a user's picture (Storage.picture_template)
    prefix: str
    boxes: list[str]
    method: str
    params: dict
    model_id: str
    created_at: datetime  # UTC
    message_id: str | None
    up: int
    down: int
    scope_id: str = ""  # whose leaderboard it is on (the chat's id unless a server's)
    author_name: str = ""  # "" for memes made before names were kept
    media_ref: str | None = None  # shows the image again without rendering (Telegram: a file_id)
    message_deleted: bool = False  # its message was found deleted

    @property
    def score(self) -> Score:
        return Score(self.up, self.down)


@dataclass(frozen=True)
class MemeFilter:
    """Which rated memes an export wants; None means no limit on that field."""

    min_score: int | None = None
    since: datetime | None = None  # naive datetimes are taken as UTC
    template: str | None = None  # slug


@dataclass(frozen=True)
class StorageStats:
    location: str  # the SQLite file, or the PostgreSQL URL without its password
    engine: str  # "sqlite" or "postgresql"
    schema_version: int
    memes: int
    ratings: int
    up: int
    down: int
    settings: int  # chats/servers with at least one setting
    file_bytes: int  # SQLite: the file plus its WAL; PostgreSQL: the database's size on the server


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def hash_user(key: str, platform: str, user_id: str) -> str:
    """The keyed hash stored in place of a user id (the platform is mixed in: ids overlap across platforms)."""
    message = f"{platform}\x00{user_id}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:USER_HASH_HEX]


# A meme's vote counts over its joined ratings r. Spelt out wherever they are used: PostgreSQL
# takes no output column names inside HAVING or ORDER BY expressions (and sums no booleans).
_UP = "COALESCE(SUM(CASE WHEN r.value = 1 THEN 1 ELSE 0 END), 0)"
_DOWN = "COALESCE(SUM(CASE WHEN r.value = -1 THEN 1 ELSE 0 END), 0)"
_SCORE = "COALESCE(SUM(r.value), 0)"  # up - down: a vote is +1 or -1
# A meme with its vote counts; callers add WHERE / GROUP BY / ORDER BY.
_MEME_COLUMNS = f"""
    m.id, m.platform, m.chat_id, m.user_hash, m.template, m.prefix, m.boxes, m.method, m.params,
    m.model_id, m.created_at, m.message_id, m.scope_id, m.author_name, m.media_ref,
    m.message_deleted_at IS NOT NULL AS message_deleted, {_UP} AS up, {_DOWN} AS down"""
_MEMES_WITH_VOTES = f"SELECT {_MEME_COLUMNS} FROM memes m LEFT JOIN ratings r ON r.meme_id = m.id"
_RATED_MEMES = f"SELECT {_MEME_COLUMNS} FROM memes m JOIN ratings r ON r.meme_id = m.id"


def _meme_from_row(row: Row) -> StoredMeme:
    return StoredMeme(
        id=row["id"],
        platform=row["platform"],
        chat_id=row["chat_id"],
        user_hash=row["user_hash"],
        template=row["template"],
        prefix=row["prefix"],
        boxes=json.loads(row["boxes"]),
        method=row["method"],
        params=json.loads(row["params"]),
        model_id=row["model_id"],
        created_at=parse_time(row["created_at"]),
        message_id=row["message_id"],
        up=row["up"],
        down=row["down"],
        scope_id=row["scope_id"] or row["chat_id"],
        author_name=row["author_name"] or "",
        media_ref=row["media_ref"],
        message_deleted=bool(row["message_deleted"]),
    )


def _decode_settings(text: str | None) -> dict[str, Any]:
    """A chat's stored settings JSON -> {name: checked value}. A value this version does not
    take (a hand-edited row, a setting since removed) is left out, so the default applies."""
    if text is None:
        return {}
    try:
        stored = json.loads(text)
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        logger.warning("ignoring a chat's unreadable stored settings %r", text[:200])
        return {}
    settings = {}
    for name, value in stored.items():
        try:
            settings[name] = check_value(name, value)
        except (KeyError, BadValue):
            logger.warning("ignoring a stored setting %s = %r: not one this version takes", name, value)
    return settings


def _check_setting(name: str, value: Any) -> Any:
    """One settings change, checked against the settings table; None (clear it) passes."""
    if value is None:
        return None
    try:
        return check_value(name, value)
    except KeyError as exc:
        raise InvalidValue(exc.args[0]) from None
    except BadValue as exc:
        raise InvalidValue(f"setting {name!r} must be {exc}, got {value!r}") from None


def _check_new_meme(meme: NewMeme) -> None:
    if not isinstance(meme.template, Template):
        raise InvalidValue(f"NewMeme.template must be a Template, got {meme.template!r}")
    for name in ("platform", "chat_id", "user_id", "method", "model_id"):
        value = getattr(meme, name)
        if not isinstance(value, str) or not value:
            raise InvalidValue(f"NewMeme.{name} must be a non-empty string, got {value!r}")
    if not isinstance(meme.prefix, str):
        raise InvalidValue(f"NewMeme.prefix must be a string, got {meme.prefix!r}")
    if not isinstance(meme.boxes, list | tuple) or not all(isinstance(b, str) for b in meme.boxes):
        raise InvalidValue(f"NewMeme.boxes must be a list of strings, got {meme.boxes!r}")
    if not isinstance(meme.params, dict):
        raise InvalidValue(f"NewMeme.params must be a dict, got {meme.params!r}")
    for name in ("scope_id", "author_name"):
        if not isinstance(getattr(meme, name), str):
            raise InvalidValue(f"NewMeme.{name} must be a string, got {getattr(meme, name)!r}")


def _filter_sql(where: MemeFilter) -> tuple[str, list[Any], str, list[Any]]:
    """WHERE clauses and HAVING clause (with their parameters) for an export filter."""
    clauses, params = [], []
    if where.since is not None:
        clauses.append("m.created_at >= ?")
        params.append(format_time(where.since))
    if where.template is not None:
        clauses.append("m.template = ?")
        params.append(where.template)
    having, having_params = "", []
    if where.min_score is not None:
        having = f"HAVING {_SCORE} >= ?"
        having_params.append(where.min_score)
    return " AND ".join(clauses) or "1 = 1", params, having, having_params


class Storage:
    """The bot's database. Create with `await Storage.open(path_or_url, key)`.

    Always `close()` it (or use `async with`): aiosqlite's worker thread is not a daemon,
    so a SQLite storage left open keeps the process from exiting.
    """

    def __init__(self, engine: Engine, user_hash_key: str, clock: Callable[[], datetime]) -> None:
        # Private: `open` configures and migrates the engine before anyone uses it.
        self._engine = engine
        self._key = user_hash_key
        self._clock = clock
        self._closed = False

    @property
    def path(self) -> Path | None:
        """The SQLite file; None on PostgreSQL."""
        return self._engine.path

    @property
    def location(self) -> str:
        """Where the data is, for people: the SQLite file, or the PostgreSQL URL without its password."""
        return self._engine.location

    @property
    def engine(self) -> str:
        """The engine's name: "sqlite" or "postgresql"."""
        return self._engine.name

    @classmethod
    async def open(
        cls,
        location: Path | str,
        user_hash_key: str,
        *,
        create: bool = True,
        clock: Callable[[], datetime] = utc_now,
    ) -> Storage:
        """Open (and create or upgrade) the database: a SQLite file's path, or a PostgreSQL
        URL ("postgresql://user:password@host:port/database"; the database must exist).

        `create=False` refuses to make a new database, for tools that only read an existing one.
        `clock` gives the time stamped on new memes and ratings.
        """
        if not user_hash_key:
            raise StorageError(
                "storage.user_hash_key is empty: set [storage] user_hash_key in the config "
                "or the MEMEBOT_USER_HASH_KEY environment variable"
            )
        if not is_postgres_url(location):
            location = Path(location)
        try:
            engine = await open_engine(location, create=create)
        except EngineError as exc:
            raise StorageError(str(exc)) from exc
        storage = cls(engine, user_hash_key, clock)
        try:
            await storage._migrate()
        except EngineError as exc:
            await engine.close()
            raise StorageError(str(exc)) from exc
        except engine.errors as exc:
            await engine.close()
            raise StorageError(unusable(engine, exc)) from exc
        except BaseException:
            await engine.close()
            raise
        return storage

    def _check_known_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.location} has schema version {version}, newer than this memebot knows "
                f"({SCHEMA_VERSION}); upgrade memebot or use another database"
            )

    async def _migrate(self) -> None:
        async with self._engine.session() as s:
            version = await self._engine.schema_version(s)
        self._check_known_version(version)
        if version == SCHEMA_VERSION:
            return
        async with self._engine.transaction() as s:
            await self._engine.begin_migration(s)
            # Read again inside the write lock: another process may have just migrated.
            version = await self._engine.schema_version(s)
            self._check_known_version(version)
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    sql = self._engine.migration_sql(statement)
                    if sql is not None:
                        await s.execute(sql)
            await self._engine.set_schema_version(s, SCHEMA_VERSION)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._engine.close()

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the storage is closed")

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Session]:
        """One write transaction; commits on exit, rolls back on any exception. A transaction
        that reads before it writes calls `lock` on what it changes first (see Session.lock)."""
        self._check_open()
        async with self._engine.transaction() as s:
            yield s

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Session]:
        self._check_open()
        async with self._engine.session() as s:
            yield s

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._read() as s:
            return await s.fetchall(sql, params)

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    def user_hash(self, platform: str, user_id: str) -> str:
        return hash_user(self._key, platform, user_id)

    # --- memes -------------------------------------------------------------------------

    async def record_meme(self, meme: NewMeme) -> int:
        _check_new_meme(meme)
        try:
            params = json.dumps(meme.params, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidValue(f"NewMeme.params must be JSON-serialisable: {exc}") from exc
        row = (
            meme.platform,
            meme.chat_id,
            self.user_hash(meme.platform, meme.user_id),
            meme.template.slug,
            meme.prefix,
            json.dumps(list(meme.boxes), ensure_ascii=False),
            meme.method,
            params,
            meme.model_id,
            meme.scope_id or meme.chat_id,
            meme.author_name or None,
            format_time(self._clock()),
        )
        async with self._write() as db:
            if meme.keep_picture and isinstance(meme.template.image, ImageBytes):
                await db.execute(
                    "INSERT INTO pictures (slug, data, name, boxes, band, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (slug) DO NOTHING",
                    (
                        meme.template.slug,
                        meme.template.image.data,
                        meme.template.name,
                        json.dumps([dataclasses.asdict(box) for box in meme.template.boxes]),
                        meme.template.band,
                        row[-1],
                    ),
                )
            inserted = await db.fetchone(
                "INSERT INTO memes (platform, chat_id, user_hash, template, prefix, boxes, method,"
                " params, model_id, scope_id, author_name, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                row,
            )
            return int(inserted["id"])

    async def set_message_id(self, meme_id: int, message_id: str, media_ref: str | None = None) -> None:
        """The platform message showing the meme, and what shows its image again (see StoredMeme)."""
        async with self._write() as db:
            changed = await db.execute(
                "UPDATE memes SET message_id = ?, media_ref = COALESCE(?, media_ref) WHERE id = ?",
                (message_id, media_ref, meme_id),
            )
            if changed == 0:
                raise UnknownMeme(meme_id)

    async def set_message_deleted(self, meme_id: int) -> None:
        """The meme's message was found deleted (by a moderator, say): it leaves the leaderboards."""
        async with self._write() as db:
            await db.execute(
                "UPDATE memes SET message_deleted_at = COALESCE(message_deleted_at, ?) WHERE id = ?",
                (format_time(self._clock()), meme_id),
            )

    async def meme_at(self, platform: str, chat_id: str, message_id: str) -> StoredMeme | None:
        """The meme a platform message shows (chat_id as stored), or None."""
        row = await self._fetchone(
            f"{_MEMES_WITH_VOTES} WHERE m.platform = ? AND m.chat_id = ? AND m.message_id = ?"
            " GROUP BY m.id ORDER BY m.id DESC LIMIT 1",
            (platform, chat_id, message_id),
        )
        return None if row is None else _meme_from_row(row)

    async def top_memes(
        self, platform: str, scope_id: str, since: datetime | None = None, n: int = 5
    ) -> list[StoredMeme]:
        """A chat's (or server's) best memes made since `since` (None: ever): score (up - down)
        first, then more up-votes, then newer. Only memes liked more than disliked make it, and
        none whose message was found deleted."""
        clauses, params = (
            ["m.platform = ?", "m.scope_id = ?", "m.message_deleted_at IS NULL"],
            [platform, scope_id],
        )
        if since is not None:
            clauses.append("m.created_at >= ?")
            params.append(format_time(since))
        rows = await self._fetchall(
            f"{_RATED_MEMES} WHERE {' AND '.join(clauses)} GROUP BY m.id HAVING {_SCORE} > 0"
            f" ORDER BY {_SCORE} DESC, {_UP} DESC, m.created_at DESC, m.id DESC LIMIT ?",
            (*params, max(n, 0)),
        )
        return [_meme_from_row(r) for r in rows]

    async def delete_meme(self, meme_id: int, platform: str, user_id: str) -> StoredMeme:
        """Delete a meme for its author, with its ratings (and its picture, if kept and no other
        meme uses it), so it leaves history, leaderboards and exports. UnknownMeme when there is
        no such meme on `platform`; NotAuthor when `user_id` did not make it."""
        async with self._write() as db:
            await db.lock(f"meme {meme_id}")
            row = await db.fetchone(
                f"{_MEMES_WITH_VOTES} WHERE m.id = ? AND m.platform = ? GROUP BY m.id", (meme_id, platform)
            )
            if row is None:
                raise UnknownMeme(meme_id)
            meme = _meme_from_row(row)
            if not hmac.compare_digest(meme.user_hash, self.user_hash(platform, user_id)):
                raise NotAuthor(meme_id)
            await db.execute("DELETE FROM memes WHERE id = ?", (meme_id,))  # ratings cascade
            if is_upload_key(meme.template):
                await db.execute(
                    "DELETE FROM pictures WHERE slug = ? AND NOT EXISTS (SELECT 1 FROM memes WHERE template = ?)",
                    (meme.template, meme.template),
                )
            return meme

    def now(self) -> datetime:
        """The time by this storage's clock (what new memes are stamped with)."""
        return self._clock()

    async def pop_param_item(self, meme_id: int, key: str) -> Any | None:
        """Take the first item of the list `params[key]` of a meme, in one transaction (two
        callers never get the same item); None when there is none left."""
        async with self._write() as db:
            await db.lock(f"meme {meme_id}")
            row = await db.fetchone("SELECT params FROM memes WHERE id = ?", (meme_id,))
            if row is None:
                raise UnknownMeme(meme_id)
            params = json.loads(row["params"])
            items = params.get(key) if isinstance(params, dict) else None
            if not isinstance(items, list) or not items:
                return None
            item = items.pop(0)
            if not items:
                del params[key]
            await db.execute(
                "UPDATE memes SET params = ? WHERE id = ?", (json.dumps(params, sort_keys=True), meme_id)
            )
            return item

    async def picture_template(self, slug: str) -> Template | None:
        """The template of a user's picture a meme was made on (slug "upload:<sha256>"); None if
        no such picture is stored (a catalog slug, or a picture since deleted)."""
        if not is_upload_key(slug):
            return None
        row = await self._fetchone("SELECT data, name, boxes, band FROM pictures WHERE slug = ?", (slug,))
        if row is None:
            return None
        layout = Layout(tuple(Box(**box) for box in json.loads(row["boxes"])), row["band"])
        return Template.from_image_bytes(bytes(row["data"]), name=row["name"], layout=layout)

    async def get_meme(self, meme_id: int) -> StoredMeme | None:
        row = await self._fetchone(f"{_MEMES_WITH_VOTES} WHERE m.id = ? GROUP BY m.id", (meme_id,))
        return None if row is None else _meme_from_row(row)

    async def user_history(self, platform: str, user_id: str, n: int = 10) -> list[StoredMeme]:
        """The user's last `n` memes, newest first."""
        rows = await self._fetchall(
            f"{_MEMES_WITH_VOTES} WHERE m.platform = ? AND m.user_hash = ?"
            " GROUP BY m.id ORDER BY m.id DESC LIMIT ?",
            (platform, self.user_hash(platform, user_id), max(n, 0)),
        )
        return [_meme_from_row(r) for r in rows]

    async def rate(self, meme_id: int, platform: str, user_id: str, value: int) -> Score:
        """Record a vote: the same vote again withdraws it, the other value replaces it."""
        if isinstance(value, bool) or value not in (-1, 1):
            raise InvalidValue(f"a rating is -1 or +1, got {value!r}")
        user = self.user_hash(platform, user_id)
        async with self._write() as db:
            # Votes on one meme queue: two presses of the same button by one user are a vote and
            # its withdrawal, never two votes.
            await db.lock(f"meme {meme_id}")
            if not await db.fetchone("SELECT 1 FROM memes WHERE id = ?", (meme_id,)):
                raise UnknownMeme(meme_id)
            key = (meme_id, user)
            old = await db.fetchone("SELECT value FROM ratings WHERE meme_id = ? AND user_hash = ?", key)
            if old is not None and old["value"] == value:
                await db.execute("DELETE FROM ratings WHERE meme_id = ? AND user_hash = ?", key)
            else:
                await db.execute(
                    "INSERT INTO ratings (meme_id, user_hash, value, rated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (meme_id, user_hash) DO UPDATE SET value = excluded.value,"
                    " rated_at = excluded.rated_at",
                    (*key, value, format_time(self._clock())),
                )
            return await self._score(db, meme_id)

    @staticmethod
    async def _score(db: Session, meme_id: int) -> Score:
        row = await db.fetchone(
            f"SELECT {_UP} AS up, {_DOWN} AS down FROM ratings r WHERE r.meme_id = ?", (meme_id,)
        )
        return Score(row["up"], row["down"])

    async def score(self, meme_id: int) -> Score:
        async with self._read() as db:
            if not await db.fetchone("SELECT 1 FROM memes WHERE id = ?", (meme_id,)):
                raise UnknownMeme(meme_id)
            return await self._score(db, meme_id)

    # --- settings ----------------------------------------------------------------------

    async def get_settings(self, platform: str, scope_id: str) -> dict[str, Any]:
        """The settings one chat/server set itself, {name: value} (bot/settings.py's types);
        a setting it never set is not in it."""
        row = await self._fetchone(
            "SELECT settings FROM settings WHERE platform = ? AND scope_id = ?", (platform, scope_id)
        )
        return _decode_settings(None if row is None else row["settings"])

    async def set_settings(self, platform: str, scope_id: str, **changes: Any) -> dict[str, Any]:
        """Change some settings of one chat/server; a value of None clears that setting.
        Returns what it has set afterwards, as `get_settings`."""
        checked = {name: _check_setting(name, value) for name, value in changes.items()}
        if not checked:
            return await self.get_settings(platform, scope_id)
        scope = (platform, scope_id)
        async with self._write() as db:
            await db.lock(f"settings {platform} {scope_id}")
            row = await db.fetchone(
                "SELECT settings FROM settings WHERE platform = ? AND scope_id = ?", scope
            )
            # Changed in place, the rest of the object as it was: keys this version does not
            # know (written by a newer one) are kept.
            try:
                stored = json.loads(row["settings"]) if row is not None else {}
            except ValueError:
                stored = {}
            if not isinstance(stored, dict):
                stored = {}
            for name, value in checked.items():
                if value is None:
                    stored.pop(name, None)
                else:
                    stored[name] = value
            if stored:
                await db.execute(
                    "INSERT INTO settings (platform, scope_id, settings) VALUES (?, ?, ?)"
                    " ON CONFLICT (platform, scope_id) DO UPDATE SET settings = excluded.settings",
                    (*scope, json.dumps(stored, ensure_ascii=False, sort_keys=True)),
                )
            else:
                # Nothing set means the same as no row; none, so stats count real overrides.
                await db.execute("DELETE FROM settings WHERE platform = ? AND scope_id = ?", scope)
            return _decode_settings(json.dumps(stored))

    # --- export, stats, backup ----------------------------------------------------------

    async def count_rated(self, where: MemeFilter | None = None) -> int:
        """How many memes with at least one rating match `where`."""
        clauses, params, having, having_params = _filter_sql(where or MemeFilter())
        row = await self._fetchone(
            f"SELECT COUNT(*) FROM ({_RATED_MEMES} WHERE {clauses} GROUP BY m.id {having}) AS rated",
            (*params, *having_params),
        )
        return int(row[0])

    async def rated_memes(
        self, where: MemeFilter | None = None, *, page: int = 500
    ) -> AsyncIterator[StoredMeme]:
        """Memes with at least one rating matching `where`, oldest first.

        Read in pages of `page` rows (by id), so a large export never holds the connection
        for long and the bot keeps running beside it.
        """
        clauses, params, having, having_params = _filter_sql(where or MemeFilter())
        last_id = 0
        while True:
            rows = await self._fetchall(
                f"{_RATED_MEMES} WHERE m.id > ? AND {clauses} GROUP BY m.id {having} ORDER BY m.id LIMIT ?",
                (last_id, *params, *having_params, page),
            )
            for row in rows:
                yield _meme_from_row(row)
            if len(rows) < page:
                return
            last_id = rows[-1]["id"]

    async def stats(self) -> StorageStats:
        async with self._read() as db:
            row = await db.fetchone(
                "SELECT (SELECT COUNT(*) FROM memes) AS memes, (SELECT COUNT(*) FROM ratings) AS ratings,"
                " (SELECT COUNT(*) FROM ratings WHERE value = 1) AS up,"
                " (SELECT COUNT(*) FROM ratings WHERE value = -1) AS down,"
                " (SELECT COUNT(*) FROM settings) AS settings"
            )
            version = await self._engine.schema_version(db)
        return StorageStats(
            location=self.location,
            engine=self.engine,
            schema_version=version,
            memes=row["memes"],
            ratings=row["ratings"],
            up=row["up"],
            down=row["down"],
            settings=row["settings"],
            file_bytes=await self._engine.size_bytes(),
        )

    async def integrity_check(self) -> list[str]:
        """["ok"] when the database is sound, else what is wrong. SQLite: its own check of the
        whole file. PostgreSQL: every row of every table read back (the server guards its
        files itself; pg_amcheck checks them deeper)."""
        self._check_open()
        return await self._engine.integrity_check()

    async def backup(self, dest: Path) -> None:
        """Copy the database to the file `dest`, safe while the bot writes (SQLite's online
        backup; `dest` is either the old file or a complete new copy, never half of one).
        On PostgreSQL a StorageError says how to use pg_dump instead."""
        self._check_open()
        try:
            await self._engine.backup(Path(dest))
        except EngineError as exc:
            raise StorageError(str(exc)) from exc

    # --- copying to another database (`memebot db migrate`) ----------------------------

    async def row_counts(self) -> dict[str, int]:
        """How many rows each table that `copy_to` copies holds."""
        async with self._read() as db:
            return {
                table: int((await db.fetchone(f"SELECT COUNT(*) FROM {table}"))[0]) for table in COPIED_TABLES
            }

    async def copy_to(
        self, target: Storage, *, page: int = 500, progress: Callable[[str, int], None] | None = None
    ) -> None:
        """Copy every row into `target`, an empty database (of either engine), in one
        transaction there: all of it or, on any error, nothing. Rows keep their ids, user
        hashes and stamps, so `target` must be used with the same user_hash_key.
        `progress(table, rows so far)` is called after each page."""
        if any((await target.row_counts()).values()):
            raise StorageError(f"{target.location} already holds memebot data; copy into an empty database")
        async with target._write() as into:
            for table, (columns, order) in COPIED_TABLES.items():
                names = ", ".join(columns)
                insert = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
                key = ", ".join(order)
                after_key = f"WHERE ({key}) > ({', '.join('?' * len(order))})"
                done, last = 0, None
                while True:
                    # Paged by the key, so a large copy never holds the source for long.
                    rows = await self._fetchall(
                        f"SELECT {names} FROM {table} {after_key if last else ''} ORDER BY {key} LIMIT ?",
                        (*(last or ()), page),
                    )
                    if not rows:
                        break
                    await into.executemany(insert, [tuple(row) for row in rows])
                    done += len(rows)
                    last = tuple(rows[-1][name] for name in order)
                    if progress is not None:
                        progress(table, done)
                await target._engine.after_copy(into, table)
