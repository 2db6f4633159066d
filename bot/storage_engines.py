"""The two databases storage runs on, and everything in which they differ.

`bot/storage.py` writes its SQL once, in the dialect both engines share (`?` placeholders,
`ON CONFLICT` upserts, `RETURNING`), and runs it through an engine from here:

- `SqliteEngine`: one aiosqlite connection, every statement under one asyncio lock, write
  transactions started with BEGIN IMMEDIATE (so they already exclude each other, across
  processes too), the schema version in `PRAGMA user_version`. The default: one file.
- `PostgresEngine`: an asyncpg connection pool; `?` becomes `$1, $2, ...`; a read-then-write
  transaction takes an advisory lock on what it changes (`Session.lock`), since PostgreSQL runs
  transactions side by side where SQLite queues them; the version lives in a one-row table.

The migrations are SQLite's text as released (never edited). PostgreSQL runs the same list
with a few SQLite-only type words rewritten (`postgres_ddl`) and skips the statements marked
`SqliteOnly`: those convert data that only an old SQLite file can hold.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiosqlite

BUSY_TIMEOUT_S = 10.0  # how long a SQLite writer waits for another process's transaction
CONNECT_TIMEOUT_S = 10.0  # how long opening a PostgreSQL connection may take
# Connections one PostgreSQL storage holds at most: the bot's statements are short, so a few
# cover hundreds of concurrent requests, and several processes fit the server's default 100.
POOL_SIZE = 8
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
HIDDEN = "***"  # what a URL's password is shown as


class EngineError(Exception):
    """The database cannot be opened or used; the message says what to do about it."""


Row = Mapping[str, Any]  # sqlite3.Row or asyncpg.Record: by column name, and by position


@dataclass(frozen=True)
class SqliteOnly:
    """A migration statement PostgreSQL skips: it converts data only an old SQLite file holds
    (PostgreSQL support began at schema v7, so its databases start empty)."""

    sql: str


Statement = str | SqliteOnly


def is_postgres_url(location: object) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def redact_url(url: str) -> str:
    """The URL with its password (in the user part or a `password=` parameter) hidden, for
    messages and logs."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{HIDDEN}@{host}"
    query = urlencode(
        [(k, HIDDEN if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def url_passwords(url: str) -> list[str]:
    """The secrets inside a database URL, for the log redaction (bot/redact.py)."""
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    found += [v for k, v in parse_qsl(parts.query) if k == "password" and v]
    return found


def unusable(engine: Engine, error: BaseException) -> str:
    """What to say about a database that opened but is not one memebot can use."""
    where = "[storage] database at another file" if engine.path else "[storage] url at another database"
    return f"{engine.location} is not a usable memebot database ({error}); point {where} or restore a backup"


class Session(Protocol):
    """One connection's worth of statements: inside a transaction, or plain reads."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; how many rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def lock(self, name: str) -> None:
        """Hold `name` until the transaction ends, so read-then-write transactions on the same
        thing (a meme's votes, a chat's settings) queue instead of overwriting each other."""
        ...


class Engine(Protocol):
    name: str  # "sqlite" or "postgresql"
    path: Path | None  # the SQLite file; None on PostgreSQL
    errors: tuple[type[BaseException], ...]  # what this engine's driver raises for a bad database

    @property
    def location(self) -> str:
        """For people: the file, or the URL without its password."""
        ...

    def session(self) -> AbstractAsyncContextManager[Session]: ...

    def transaction(self) -> AbstractAsyncContextManager[Session]: ...

    async def schema_version(self, session: Session) -> int: ...

    async def begin_migration(self, session: Session) -> None:
        """Called first in the migrating transaction: excludes other processes migrating."""
        ...

    async def set_schema_version(self, session: Session, version: int) -> None: ...

    def migration_sql(self, statement: Statement) -> str | None:
        """A migration statement as this engine runs it; None: not here."""
        ...

    async def size_bytes(self) -> int: ...

    async def integrity_check(self) -> list[str]: ...

    async def backup(self, dest: Path) -> None: ...

    async def after_copy(self, session: Session, table: str) -> None:
        """Rows with their own ids were copied into `table`: new rows must number after them."""
        ...

    async def close(self) -> None: ...


# --- SQLite ------------------------------------------------------------------------------


@dataclass
class SqliteSession:
    conn: aiosqlite.Connection

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await self.conn.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.conn.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self.conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def lock(self, name: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already holds the whole database's write lock."""


@dataclass
class SqliteEngine:
    conn: aiosqlite.Connection
    path: Path
    name: str = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.DatabaseError,)
    # One connection, one statement at a time: a write transaction is never interleaved
    # with another coroutine's statements.
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def location(self) -> str:
        return str(self.path)

    @classmethod
    async def open(cls, path: Path, *, create: bool) -> SqliteEngine:
        if path.is_dir():
            raise EngineError(f"{path} is a folder; [storage] database must name a file")
        if not create and not path.exists():
            raise EngineError(
                f"there is no database at {path}: the bot creates it on first run "
                "(or check [storage] database in the config)"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, the sqlite3 module stays out of it.
            conn = await aiosqlite.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            raise EngineError(f"cannot open the database {path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        engine = cls(conn, path)
        try:
            await engine._configure()
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise EngineError(unusable(engine, exc)) from exc
        except BaseException:
            await conn.close()
            raise
        return engine

    async def _configure(self) -> None:
        row = await (await self.conn.execute("PRAGMA journal_mode = WAL")).fetchone()
        if row[0].lower() != "wal":
            raise EngineError(
                f"{self.path}: SQLite could not switch to WAL mode (got {row[0]!r}); "
                "put the database on a local disk"
            )
        await self.conn.execute("PRAGMA foreign_keys = ON")
        # NORMAL in WAL mode: a killed process loses nothing committed; only power loss can
        # drop the last transactions, and the file stays consistent either way.
        await self.conn.execute("PRAGMA synchronous = NORMAL")

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        async with self._lock:
            yield SqliteSession(self.conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        """One write transaction; commits on exit, rolls back on any exception."""
        async with self._lock:
            # IMMEDIATE takes the write lock now (waiting up to the busy timeout), so a
            # read-then-write transaction cannot fail half-way because another process wrote.
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteSession(self.conn)
            except BaseException:
                if self.conn.in_transaction:
                    await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")

    async def schema_version(self, session: Session) -> int:
        row = await session.fetchone("PRAGMA user_version")
        return int(row[0])

    async def begin_migration(self, session: Session) -> None:
        """Nothing to do: the transaction is BEGIN IMMEDIATE."""

    async def set_schema_version(self, session: Session, version: int) -> None:
        await session.execute(f"PRAGMA user_version = {int(version)}")

    def migration_sql(self, statement: Statement) -> str | None:
        return statement.sql if isinstance(statement, SqliteOnly) else statement

    async def size_bytes(self) -> int:
        """The file plus its WAL."""
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    async def integrity_check(self) -> list[str]:
        """SQLite's own consistency check; ["ok"] when the file is sound."""
        try:
            async with self.session() as s:
                return [r[0] for r in await s.fetchall("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:  # damage where the check itself reads stops it half-way
            return [f"the check stopped: {exc}"]

    async def backup(self, dest: Path) -> None:
        """Copy the database to `dest` with SQLite's online backup, safe while the bot writes.

        The copy is written beside `dest` and renamed into place, so `dest` is either the
        old file or a complete new copy, never half of one.
        """
        if dest.exists() and dest.resolve() == self.path.resolve():
            raise EngineError(f"{dest} is the database itself; back it up to another path")
        if dest.is_dir():
            raise EngineError(f"{dest} is a folder; give a file name for the backup")
        partial = dest.with_name(dest.name + ".partial")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial.unlink(missing_ok=True)
            # The backup runs on aiosqlite's worker thread, so the target must allow that.
            target = sqlite3.connect(partial, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise EngineError(f"cannot write the backup {dest}: {exc}") from exc
        try:
            async with self._lock:
                await self.conn.backup(target)
            # A backup should be one self-contained file, not a WAL database missing its -wal.
            await asyncio.to_thread(target.execute, "PRAGMA journal_mode = DELETE")
            target.close()
            os.replace(partial, dest)
        except (OSError, sqlite3.Error) as exc:
            raise EngineError(f"backup to {dest} failed: {exc}") from exc
        finally:
            target.close()
            partial.unlink(missing_ok=True)

    async def after_copy(self, session: Session, table: str) -> None:
        """Nothing to do: an INTEGER PRIMARY KEY numbers new rows after the largest id."""

    async def close(self) -> None:
        async with self._lock:
            await self.conn.close()


# --- PostgreSQL --------------------------------------------------------------------------

# SQLite's type words in the released migrations, as PostgreSQL spells them. The id is a plain
# INTEGER in both (SQLite's is 64-bit, PostgreSQL's 32: two billion memes) so that the ratings'
# INTEGER meme_id matches it, and so that SUMs of INTEGER columns stay Python ints (a BIGINT
# sum is NUMERIC). BY DEFAULT, not ALWAYS: `memebot db migrate` copies rows with their ids.
# REAL is 8 bytes in SQLite, 4 in PostgreSQL.
_POSTGRES_DDL = (
    (re.compile(r"\bid INTEGER PRIMARY KEY\b"), "id INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\s*\bWITHOUT ROWID\b"), ""),
)
# A `?` placeholder, or a string literal to step over (a `?` inside one is text).
_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\?")
# The schema version, in one row; the table is made by the first migration's transaction.
_VERSION_TABLE = "schema_version"


def postgres_ddl(sql: str) -> str:
    for pattern, replacement in _POSTGRES_DDL:
        sql = pattern.sub(replacement, sql)
    return sql


def numbered_placeholders(sql: str) -> str:
    """`?, ?` -> `$1, $2`: storage's SQL as asyncpg takes it."""
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group() != "?":
            return match.group()
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(number, sql)


def _text_safe(params: Sequence[Any]) -> tuple[Any, ...]:
    """PostgreSQL's text cannot hold the NUL character (SQLite's can): U+FFFD takes its place, so
    a stray NUL in a user's words is stored as a visible replacement instead of failing the write."""
    return tuple(p.replace("\x00", "\ufffd") if isinstance(p, str) else p for p in params)


def _rows_changed(status: str) -> int:
    """asyncpg's command tag ("UPDATE 3", "INSERT 0 1") -> rows changed."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


@dataclass
class PostgresSession:
    conn: Any  # asyncpg.Connection (or its pool proxy)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return _rows_changed(await self.conn.execute(numbered_placeholders(sql), *_text_safe(params)))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.conn.executemany(numbered_placeholders(sql), [_text_safe(row) for row in rows])

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self.conn.fetch(numbered_placeholders(sql), *_text_safe(params)))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def lock(self, name: str) -> None:
        # Released at COMMIT or ROLLBACK. Two names that hash alike only queue needlessly.
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", name)


@dataclass
class PostgresEngine:
    pool: Any  # asyncpg.Pool
    url: str  # with its password: never shown; `location` is what people see
    name: str = "postgresql"
    path: Path | None = None
    errors: tuple[type[BaseException], ...] = ()

    @property
    def location(self) -> str:
        return redact_url(self.url)

    @classmethod
    async def open(cls, url: str, *, create: bool) -> PostgresEngine:
        # Imported here: a SQLite-only bot never loads the PostgreSQL driver.
        import asyncpg

        shown = redact_url(url)
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT_S)
        except asyncpg.InvalidCatalogNameError as exc:
            raise EngineError(
                f"{shown}: {exc}; create it first (createdb, or CREATE DATABASE as its owner): "
                "the bot creates its tables, not the database"
            ) from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise EngineError(f"cannot open the database {shown}: {exc}") from exc
        except (OSError, TimeoutError, ValueError) as exc:
            # asyncpg's messages name the host and port, never the password.
            raise EngineError(
                f"cannot reach the PostgreSQL server at {shown}: {exc}; is it running, "
                "and is [storage] url (or MEMEBOT_DATABASE_URL) right?"
            ) from exc
        engine = cls(pool, url, errors=(asyncpg.PostgresError,))
        if not create and not await engine._has_tables():
            await pool.close()
            raise EngineError(
                f"there is no memebot database at {shown}: the bot creates its tables on first run "
                "(or check [storage] url in the config)"
            )
        return engine

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        async with self.pool.acquire() as conn:
            yield PostgresSession(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        """One transaction on one pooled connection; commits on exit, rolls back on any exception."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield PostgresSession(conn)

    async def schema_version(self, session: Session) -> int:
        row = await session.fetchone(f"SELECT to_regclass('{_VERSION_TABLE}') IS NOT NULL AS present")
        if not row["present"]:
            return 0
        row = await session.fetchone(f"SELECT version FROM {_VERSION_TABLE}")
        return 0 if row is None else int(row["version"])

    async def begin_migration(self, session: Session) -> None:
        # Two processes starting on a new database: the second waits here, then finds it migrated.
        await session.lock("memebot schema migration")
        await session.execute(f"CREATE TABLE IF NOT EXISTS {_VERSION_TABLE} (version INTEGER NOT NULL)")

    async def set_schema_version(self, session: Session, version: int) -> None:
        await session.execute(f"DELETE FROM {_VERSION_TABLE}")
        await session.execute(f"INSERT INTO {_VERSION_TABLE} (version) VALUES (?)", (version,))

    def migration_sql(self, statement: Statement) -> str | None:
        return None if isinstance(statement, SqliteOnly) else postgres_ddl(statement)

    async def _has_tables(self) -> bool:
        async with self.session() as s:
            row = await s.fetchone(
                "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = current_schema()"
            )
        return bool(row["n"])

    async def size_bytes(self) -> int:
        """The whole database's size on the server (its tables, indices and their free space)."""
        async with self.session() as s:
            row = await s.fetchone("SELECT pg_database_size(current_database()) AS size")
        return int(row["size"])

    async def integrity_check(self) -> list[str]:
        """PostgreSQL guards its own files (WAL, and page checksums where the cluster has them
        on); this reads every row of every table, which is where a damaged page shows up."""
        problems = []
        async with self.session() as s:
            tables = await s.fetchall(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
            )
            for table in tables:
                try:
                    # Text of each whole row: every column's value is read and decoded.
                    await s.fetchone(f'SELECT SUM(LENGTH(t::text)) FROM "{table["table_name"]}" t')
                except self.errors as exc:
                    problems.append(f"table {table['table_name']}: {exc}")
        return problems or ["ok"]

    async def backup(self, dest: Path) -> None:
        raise EngineError(
            f"{self.location} is a PostgreSQL database: back it up with PostgreSQL's own tools, "
            f'pg_dump --format=custom --file={dest} "$MEMEBOT_DATABASE_URL" (or your [storage] url), '
            "and restore it with pg_restore"
        )

    async def after_copy(self, session: Session, table: str) -> None:
        if table == "memes":
            await session.execute(
                "SELECT setval(pg_get_serial_sequence('memes', 'id'), COALESCE(MAX(id), 0) + 1, false)"
                " FROM memes"
            )

    async def close(self) -> None:
        await self.pool.close()


async def open_engine(location: Path | str, *, create: bool) -> Engine:
    """A PostgreSQL URL opens PostgreSQL; anything else is the SQLite file's path."""
    if is_postgres_url(location):
        return await PostgresEngine.open(str(location), create=create)
    return await SqliteEngine.open(Path(location), create=create)
