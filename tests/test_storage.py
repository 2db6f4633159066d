"""Storage: concurrency, ratings, settings, migrations, crash safety, privacy, export.

Every test of what storage does runs on both engines: the `location` fixture is a SQLite file
(`[sqlite]`) or a new database on the session's PostgreSQL server (`[postgres]`, see
tests/conftest.py), so `pytest -k postgres` runs the PostgreSQL half. SQLite-only tests are
about the file itself: old schemas only a SQLite file can hold, corruption, kill -9, backup.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import runpy
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from bot.storage import (
    COPIED_TABLES,
    SCHEMA_VERSION,
    InvalidValue,
    NewMeme,
    NotAuthor,
    Score,
    Storage,
    StorageError,
    StoredMeme,
    UnknownMeme,
)
from bot.storage_engines import redact_url, url_passwords
from cli.main import main
from common.records import ExportError, ExportRow, read_export
from common.template import Template
from tests.conftest import POSTGRES_TEST_PASSWORD
from tests.helpers.postgres import PostgresServer, free_port
from tests.helpers.templates import catalog_template

KEY = "test-hash-key"
WRITER = Path(__file__).parent / "helpers" / "storage_writer.py"


def new_meme(
    i: int = 0,
    *,
    platform: str = "telegram",
    chat_id: str = "chat-1",
    user_id: str = "user-1",
    template: str = "drake",
    boxes: list[str] | None = None,
) -> NewMeme:
    return NewMeme(
        platform=platform,
        chat_id=chat_id,
        user_id=user_id,
        template=catalog_template(template),
        prefix=f"prefix {i}",
        boxes=boxes if boxes is not None else [f"top {i}", f"bottom {i}"],
        method="sample",
        params={"temperature": 0.8, "seed": i},
        model_id="transformer-test",
    )


@dataclass
class FakeClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's database is: a new SQLite file, or a new PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "memebot.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def storage(location: Path | str) -> AsyncIterator[Storage]:
    store = await Storage.open(location, KEY)
    yield store
    await store.close()


@pytest.fixture
async def sqlite_storage(tmp_path: Path) -> AsyncIterator[Storage]:
    store = await Storage.open(tmp_path / "memebot.db", KEY)
    yield store
    await store.close()


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture
def run_sql(location: Path | str, request: pytest.FixtureRequest) -> Callable[[str], list[str]]:
    """Run SQL on the test's database behind storage's back (a hand edit, a look at the schema);
    its rows as text, columns joined by "|"."""
    if isinstance(location, Path):

        def on_sqlite(statement: str) -> list[str]:
            with sqlite3.connect(location) as conn:
                rows = conn.execute(statement).fetchall()
            conn.close()
            return ["|".join(str(v) for v in row) for row in rows]

        return on_sqlite
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return lambda statement: server.sql(database_name(location), statement).splitlines()


# --- concurrency -------------------------------------------------------------------------


async def hammer(storages: list[Storage], writers: int = 200) -> tuple[int, dict[int, int]]:
    """`writers` concurrent tasks each record a meme, vote on it, and vote on one shared meme."""
    shared = await storages[0].record_meme(new_meme(-1, user_id="author"))
    own_votes: dict[int, int] = {}

    async def writer(i: int) -> None:
        store = storages[i % len(storages)]
        meme_id = await store.record_meme(new_meme(i, user_id=f"user-{i}", chat_id=f"chat-{i % 5}"))
        value = 1 if i % 3 else -1
        await store.rate(meme_id, "telegram", f"user-{i}", value)
        await store.rate(shared, "telegram", f"user-{i}", 1)
        own_votes[meme_id] = value

    await asyncio.gather(*(writer(i) for i in range(writers)))
    return shared, own_votes


async def check_hammered(
    location: Path | str, shared: int, own_votes: dict[int, int], writers: int = 200
) -> None:
    async with await Storage.open(location, KEY) as fresh:
        assert await fresh.integrity_check() == ["ok"]
        stats = await fresh.stats()
        assert (stats.memes, stats.ratings) == (writers + 1, 2 * writers)
        assert await fresh.score(shared) == Score(up=writers, down=0)
        assert len(own_votes) == writers
        for meme_id, value in own_votes.items():
            meme = await fresh.get_meme(meme_id)
            i = int(meme.prefix.split()[1])
            assert meme.boxes == [f"top {i}", f"bottom {i}"]
            assert meme.chat_id == f"chat-{i % 5}"
            assert meme.score == (Score(1, 0) if value == 1 else Score(0, 1))


async def test_200_concurrent_writers_on_one_storage_lose_nothing(
    storage: Storage, location: Path | str
) -> None:
    shared, own_votes = await hammer([storage])
    await check_hammered(location, shared, own_votes)
    if isinstance(location, Path):
        assert integrity(location) == "ok"


async def test_200_concurrent_writers_on_two_storages_sharing_a_database(location: Path | str) -> None:
    first, second = await Storage.open(location, KEY), await Storage.open(location, KEY)
    try:
        shared, own_votes = await hammer([first, second])
    finally:
        await first.close()
        await second.close()
    await check_hammered(location, shared, own_votes)


async def test_read_then_write_transactions_on_one_meme_queue_across_storages(location: Path | str) -> None:
    """Two processes at once: a double press is a vote and its withdrawal, never two votes; two
    🔁 presses never take the same kept candidate. (SQLite queues all writers; PostgreSQL runs
    them side by side unless the transaction locks what it changes.)"""
    first, second = await Storage.open(location, KEY), await Storage.open(location, KEY)
    try:
        memes = [await first.record_meme(new_meme(i)) for i in range(10)]
        await asyncio.gather(
            *(
                store.rate(meme_id, "telegram", "double-clicker", 1)
                for meme_id in memes
                for store in (first, second)
            )
        )
        assert [await first.score(meme_id) for meme_id in memes] == [Score(0, 0)] * 10
        kept = replace(new_meme(), params={"candidates": list(range(20))})
        meme_id = await first.record_meme(kept)
        taken = await asyncio.gather(
            *(store.pop_param_item(meme_id, "candidates") for store in (first, second) * 11)
        )
        assert sorted(t for t in taken if t is not None) == list(range(20)) and taken.count(None) == 2
    finally:
        await first.close()
        await second.close()


# --- ratings -----------------------------------------------------------------------------


async def test_rating_toggles_withdraws_and_changes(storage: Storage) -> None:
    meme_id = await storage.record_meme(new_meme())
    assert await storage.rate(meme_id, "telegram", "alice", 1) == Score(1, 0)
    assert await storage.rate(meme_id, "telegram", "alice", 1) == Score(0, 0)  # same press withdraws
    assert await storage.rate(meme_id, "telegram", "alice", 1) == Score(1, 0)
    assert await storage.rate(meme_id, "telegram", "alice", -1) == Score(0, 1)  # other press changes it
    assert await storage.rate(meme_id, "telegram", "bob", 1) == Score(1, 1)
    # The same id on another platform is another person.
    assert await storage.rate(meme_id, "discord", "alice", -1) == Score(1, 2)
    assert await storage.score(meme_id) == Score(1, 2)
    assert (await storage.score(meme_id)).value == -1
    assert (await storage.get_meme(meme_id)).score == Score(1, 2)
    assert (await storage.stats()).ratings == 3


async def test_rating_bad_value_or_unknown_meme_is_a_typed_error(storage: Storage) -> None:
    meme_id = await storage.record_meme(new_meme())
    for bad in (0, 2, True, "1"):
        with pytest.raises(InvalidValue):
            await storage.rate(meme_id, "telegram", "alice", bad)
    with pytest.raises(UnknownMeme) as err:
        await storage.rate(999, "telegram", "alice", 1)
    assert err.value.meme_id == 999
    with pytest.raises(UnknownMeme):
        await storage.score(999)
    with pytest.raises(UnknownMeme):
        await storage.set_message_id(999, "m1")
    assert await storage.get_meme(999) is None
    # A failed call leaves the storage usable.
    assert await storage.rate(meme_id, "telegram", "alice", 1) == Score(1, 0)


async def test_record_meme_rejects_malformed_memes(storage: Storage) -> None:
    good = new_meme()
    bad_memes = [
        NewMeme(**{**good.__dict__, "user_id": ""}),
        NewMeme(**{**good.__dict__, "boxes": "not a list"}),
        NewMeme(**{**good.__dict__, "boxes": ["ok", 3]}),
        NewMeme(**{**good.__dict__, "params": {"x": object()}}),
    ]
    for meme in bad_memes:
        with pytest.raises(InvalidValue):
            await storage.record_meme(meme)
    assert (await storage.stats()).memes == 0


# --- queries -----------------------------------------------------------------------------


async def test_history_is_the_users_newest_first(storage: Storage) -> None:
    ids = [await storage.record_meme(new_meme(i, user_id="alice")) for i in range(5)]
    await storage.record_meme(new_meme(99, user_id="bob"))
    await storage.record_meme(new_meme(98, user_id="alice", platform="discord"))
    history = await storage.user_history("telegram", "alice", n=3)
    assert [m.id for m in history] == ids[:1:-1]
    assert all(m.user_hash == storage.user_hash("telegram", "alice") for m in history)
    assert await storage.user_history("telegram", "nobody") == []


async def test_message_id_maps_a_button_press_back_to_its_meme(storage: Storage) -> None:
    meme_id = await storage.record_meme(new_meme(boxes=["when the", "tests pass"]))
    assert (await storage.get_meme(meme_id)).message_id is None
    await storage.set_message_id(meme_id, "4242")
    meme = await storage.get_meme(meme_id)
    assert meme.message_id == "4242"
    assert meme.boxes == ["when the", "tests pass"]
    assert meme.params == {"temperature": 0.8, "seed": 0}
    assert meme.created_at.tzinfo is not None


async def test_a_nul_character_in_a_users_words_does_not_fail_the_write(storage: Storage) -> None:
    meme_id = await storage.record_meme(replace(new_meme(), prefix="a\x00b", author_name="Ann\x00"))
    meme = await storage.get_meme(meme_id)
    # SQLite keeps it; PostgreSQL's text cannot hold it and stores U+FFFD instead.
    nul = "\x00" if storage.engine == "sqlite" else "\ufffd"
    assert (meme.prefix, meme.author_name) == (f"a{nul}b", f"Ann{nul}")


# --- settings ----------------------------------------------------------------------------


async def test_settings_unset_is_none_set_and_clear(storage: Storage) -> None:
    assert await storage.get_settings("discord", "guild-1") == {}
    changed = await storage.set_settings(
        "discord",
        "guild-1",
        temperature=0.5,
        allowed_templates=["drake", "two-buttons"],
        filter_enabled=False,
    )
    assert changed == {
        "temperature": 0.5,
        "allowed_templates": ("drake", "two-buttons"),
        "filter_enabled": False,
    }
    assert await storage.get_settings("discord", "guild-1") == changed
    # Another server, or the same id on another platform, is untouched.
    assert await storage.get_settings("discord", "guild-2") == {}
    assert await storage.get_settings("telegram", "guild-1") == {}

    updated = await storage.set_settings("discord", "guild-1", beam_width=4, cooldown_s=30, temperature=None)
    assert updated == {
        "beam_width": 4,
        "cooldown_s": 30.0,
        "allowed_templates": ("drake", "two-buttons"),
        "filter_enabled": False,
    }
    assert isinstance(updated["cooldown_s"], float)  # typed as the table says, whatever was passed
    assert (await storage.stats()).settings == 1
    # An empty allow-list is a real setting (nothing allowed), distinct from unset.
    assert (await storage.set_settings("discord", "guild-1", allowed_templates=[]))["allowed_templates"] == ()

    cleared = await storage.set_settings(
        "discord", "guild-1", beam_width=None, cooldown_s=None, allowed_templates=None, filter_enabled=None
    )
    assert cleared == {}
    assert (await storage.stats()).settings == 0


async def test_settings_reject_unknown_names_and_wrong_types(storage: Storage) -> None:
    bad_changes = [
        {"temprature": 0.5},
        {"temperature": "hot"},
        {"beam_width": 2.5},
        {"beam_width": True},
        {"filter_enabled": 1},
        {"allowed_templates": "drake"},
        {"method": ""},
        {"method": "telepathy"},  # not a decoding method
        {"temperature": 50.0},  # out of the setting's range
        {"best_of": 0},
    ]
    for changes in bad_changes:
        with pytest.raises(InvalidValue):
            await storage.set_settings("telegram", "chat-1", **changes)
    assert await storage.get_settings("telegram", "chat-1") == {}


# --- schema versions ---------------------------------------------------------------------

# The v1 schema exactly as the first release created it (frozen here on purpose: a change
# to the migration list must still upgrade databases that release wrote).
V1_SCHEMA = """
CREATE TABLE memes (
    id INTEGER PRIMARY KEY, platform TEXT NOT NULL, chat_id TEXT NOT NULL, user_hash TEXT NOT NULL,
    template TEXT NOT NULL, prefix TEXT NOT NULL DEFAULT '', boxes TEXT NOT NULL, method TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}', model_id TEXT NOT NULL, created_at TEXT NOT NULL, message_id TEXT
);
CREATE TABLE ratings (
    meme_id INTEGER NOT NULL REFERENCES memes (id) ON DELETE CASCADE, user_hash TEXT NOT NULL,
    value INTEGER NOT NULL CHECK (value IN (-1, 1)), rated_at TEXT NOT NULL,
    PRIMARY KEY (meme_id, user_hash)
) WITHOUT ROWID;
CREATE TABLE settings (
    platform TEXT NOT NULL, scope_id TEXT NOT NULL, method TEXT, temperature REAL, beam_width INTEGER,
    max_length INTEGER, filter_enabled INTEGER, PRIMARY KEY (platform, scope_id)
);
CREATE INDEX memes_by_user ON memes (platform, user_hash, id);
PRAGMA user_version = 1;
"""


async def test_v1_database_is_upgraded_in_place_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
        conn.execute(
            "INSERT INTO memes VALUES (7, 'telegram', 'chat-1', 'abc123', 'drake', 'when', "
            "'[\"when the\", \"code works\"]', 'beam', '{\"beam_width\": 3}', 'lstm-v1', "
            "'2024-05-01T12:00:00.000000Z', '555')"
        )
        conn.execute("INSERT INTO ratings VALUES (7, 'rater', 1, '2024-05-01T12:01:00.000000Z')")
        conn.execute("INSERT INTO settings VALUES ('telegram', 'chat-1', 'greedy', NULL, NULL, 80, 1)")
    conn.close()

    async with await Storage.open(path, KEY) as store:
        assert (await store.stats()).schema_version == SCHEMA_VERSION == 7
        meme = await store.get_meme(7)
        assert meme.boxes == ["when the", "code works"]
        assert meme.params == {"beam_width": 3}
        assert meme.created_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
        assert (meme.message_id, meme.model_id, meme.score) == ("555", "lstm-v1", Score(1, 0))
        settings = await store.get_settings("telegram", "chat-1")
        assert settings == {"method": "greedy", "max_length": 80, "filter_enabled": True}
        # A setting the v1 schema had no column for works on the migrated file.
        assert (await store.set_settings("telegram", "chat-1", cooldown_s=15))["cooldown_s"] == 15.0
        assert await store.record_meme(new_meme()) == 8
    assert integrity(path) == "ok"
    with sqlite3.connect(path) as conn:
        indices = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"memes_by_user", "memes_by_chat", "memes_by_message"} <= indices


# The settings table as v4 left it: one column per setting (v6 keeps them as one JSON object).
V4_SETTINGS = """
ALTER TABLE settings ADD COLUMN allowed_templates TEXT;
ALTER TABLE settings ADD COLUMN cooldown_s REAL;
ALTER TABLE settings ADD COLUMN chat_rate_per_minute REAL;
ALTER TABLE settings ADD COLUMN lexicon INTEGER;
ALTER TABLE settings ADD COLUMN best_of INTEGER;
PRAGMA user_version = 4;
"""


async def test_v4_settings_columns_move_into_one_json_object_value_for_value(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA + V4_SETTINGS)
        rows = [
            # platform, scope, method, temperature, beam_width, max_length, filter, allowed, cooldown,
            # chat rate, lexicon, best_of
            ("discord", "g1", "beam", 0.3, 5, 60, 0, '["drake", "two-buttons"]', 30.0, 6.0, 0, 3),
            ("telegram", "c1", None, None, None, None, 1, "[]", None, None, 1, None),
            ("telegram", "c2", None, None, None, None, None, None, None, None, None, None),  # nothing set
            ("telegram", "c3", "telepathy", 0.5, None, None, None, "not json", None, None, None, None),
        ]
        conn.executemany("INSERT INTO settings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.close()

    async with await Storage.open(path, KEY) as store:
        assert await store.get_settings("discord", "g1") == {
            "method": "beam",
            "temperature": 0.3,
            "beam_width": 5,
            "max_length": 60,
            "filter_enabled": False,
            "allowed_templates": ("drake", "two-buttons"),
            "cooldown_s": 30.0,
            "chat_rate_per_minute": 6.0,
            "lexicon": False,
            "best_of": 3,
        }
        # An empty allow-list stays a setting (nothing allowed); switches stay booleans.
        assert await store.get_settings("telegram", "c1") == {
            "filter_enabled": True,
            "allowed_templates": (),
            "lexicon": True,
        }
        assert await store.get_settings("telegram", "c2") == {}
        # A value this version does not take is left out (the default applies), the rest kept.
        assert await store.get_settings("telegram", "c3") == {"temperature": 0.5}
        assert (await store.stats()).settings == 3  # the row with nothing set is gone
    assert integrity(path) == "ok"
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(settings)")]
    conn.close()
    assert columns == ["platform", "scope_id", "settings"]


async def test_stored_settings_this_version_cannot_read_fall_back_to_defaults(
    storage: Storage, run_sql: Callable[[str], list[str]]
) -> None:
    """A hand-edited row, or keys a newer version wrote: reading never fails, and a change
    keeps the keys it does not know."""
    await storage.set_settings("telegram", "c", best_of=4)
    run_sql(
        """UPDATE settings SET settings = '{"best_of": 4, "beam_width": "wide", "colour": "red"}'"""
        " WHERE scope_id = 'c'"
    )
    run_sql("INSERT INTO settings VALUES ('telegram', 'broken', '[not json')")
    assert await storage.get_settings("telegram", "c") == {"best_of": 4}
    assert await storage.get_settings("telegram", "broken") == {}
    assert await storage.set_settings("telegram", "c", lexicon=False) == {"best_of": 4, "lexicon": False}
    (stored,) = run_sql("SELECT settings FROM settings WHERE scope_id = 'c'")
    assert json.loads(stored)["colour"] == "red"
    assert await storage.set_settings("telegram", "broken", cooldown_s=5) == {"cooldown_s": 5.0}


async def test_newer_schema_or_a_non_database_file_is_refused_with_advice(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StorageError, match="newer than this memebot"):
        await Storage.open(newer, KEY)

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StorageError, match="not a usable memebot database"):
        await Storage.open(junk, KEY)
    with pytest.raises(StorageError, match="user_hash_key"):
        await Storage.open(tmp_path / "x.db", "")
    with pytest.raises(StorageError, match="no database"):
        await Storage.open(tmp_path / "missing.db", KEY, create=False)
    assert not (tmp_path / "missing.db").exists()


# --- crash safety, privacy, backup --------------------------------------------------------


def test_database_survives_sigkill_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    committed: list[int] = []
    try:
        while len(committed) < 40:
            line = proc.stdout.readline()
            assert line, f"writer died: {proc.stderr.read()}"
            committed.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    meme_for = runpy.run_path(str(WRITER))["meme_for"]
    assert integrity(path) == "ok"

    async def check() -> None:
        async with await Storage.open(path, "kill-test-key") as store:
            stats = await store.stats()
            assert stats.memes >= len(committed)
            for meme_id in range(1, stats.memes + 1):
                meme = await store.get_meme(meme_id)
                expected = meme_for(int(meme.prefix))
                assert (meme.boxes, meme.params, meme.template) == (
                    expected.boxes,
                    expected.params,
                    expected.template.slug,
                )
                if meme_id in committed:
                    assert meme.score == Score(1, 0)
            assert stats.ratings >= len(committed)

    asyncio.run(check())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


RAW_IDS = ["tg-user-8675309", "discord-998877665544"]


def assert_private(blob: bytes) -> None:
    assert blob
    for user in RAW_IDS:
        assert user.encode() not in blob
        # Not a plain (unkeyed) hash either, which anyone could recompute from the id.
        assert hashlib.sha256(user.encode()).hexdigest()[:16].encode() not in blob


async def write_memes_of_raw_ids(store: Storage) -> list[StoredMeme]:
    for n, user in enumerate(RAW_IDS):
        meme_id = await store.record_meme(new_meme(n, user_id=user))
        for voter in RAW_IDS:
            await store.rate(meme_id, "telegram", voter, 1)
    history = await store.user_history("telegram", RAW_IDS[0])
    assert len(history) == 1 and history[0].user_hash != RAW_IDS[0]
    return history


async def test_no_raw_user_id_in_database_or_wal_bytes(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    raw_ids = RAW_IDS

    def file_bytes() -> bytes:
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        return b"".join(f.read_bytes() for f in files if f.exists())

    async with await Storage.open(path, KEY) as store:
        history = await write_memes_of_raw_ids(store)
        assert path.with_name(path.name + "-wal").exists()  # the live WAL is checked too
        assert_private(file_bytes())
    assert_private(file_bytes())
    # Another key hashes the same user differently, so two exports cannot be cross-joined.
    async with await Storage.open(tmp_path / "other.db", "another-key") as other:
        assert other.user_hash("telegram", raw_ids[0]) != history[0].user_hash


async def test_backup_while_another_connection_writes_is_a_readable_copy(
    sqlite_storage: Storage, tmp_path: Path
) -> None:
    storage = sqlite_storage
    for i in range(30):
        await storage.rate(await storage.record_meme(new_meme(i)), "telegram", "alice", 1)
    dest = tmp_path / "backups" / "copy.db"

    async def keep_writing() -> None:
        for i in range(30, 60):
            await storage.record_meme(new_meme(i))

    async with await Storage.open(storage.path, KEY) as second:
        await asyncio.gather(second.backup(dest), keep_writing())
    assert integrity(dest) == "ok"
    assert not dest.with_name("copy.db-wal").exists() and not dest.with_name("copy.db.partial").exists()
    with sqlite3.connect(dest) as conn:
        memes = conn.execute("SELECT COUNT(*) FROM memes").fetchone()[0]
        assert 30 <= memes <= 60
        assert conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 30
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    with pytest.raises(StorageError, match="database itself"):
        await storage.backup(storage.path)


# --- export and the CLI ------------------------------------------------------------------

DAY = {d: datetime(2024, m, dd, 9, 30, tzinfo=UTC) for d, (m, dd) in {
    "jan01": (1, 1), "jan10": (1, 10), "feb01": (2, 1), "mar01": (3, 1), "mar15": (3, 15), "apr01": (4, 1)
}.items()}  # fmt: skip

# name -> (template, made on, votes by voter); a vote withdrawn leaves the meme unrated.
DATASET = {
    "A": ("drake", "jan01", {"u1": 1, "u2": 1, "u3": 1}),
    "B": ("drake", "feb01", {"u1": 1, "u2": -1}),
    "C": ("distracted-boyfriend", "mar01", {"u1": -1, "u2": -1}),
    "D": ("distracted-boyfriend", "mar15", {"u3": 1}),
    "E": ("drake", "apr01", {}),
    "F": ("change-my-mind", "jan10", {"u1": 0}),  # 0 = voted then withdrawn
}
BOXES = {  # awkward text on purpose: CSV quoting, commas, unicode, a newline
    "A": ['when "it" works, first try', "ünïcödé 😀"],
    "B": ["a", "b"],
    "C": ["line one\nline two", ""],
    "D": ["d"],
    "E": ["e"],
    "F": ["f"],
}


def expected_rows(names: str) -> list[tuple]:
    rows = []
    for name in names:
        template, _, votes = DATASET[name]
        up = sum(v == 1 for v in votes.values())
        down = sum(v == -1 for v in votes.values())
        rows.append((template, BOXES[name], up, down, up - down, "transformer-test", DAY[DATASET[name][1]]))
    return rows


def as_tuples(rows: list[ExportRow]) -> list[tuple]:
    return [(r.template, r.boxes, r.up, r.down, r.score, r.model_id, r.created_at) for r in rows]


async def fill_dataset(location: Path | str) -> None:
    clock = FakeClock(DAY["jan01"])
    async with await Storage.open(location, KEY, clock=clock) as store:
        for name, (template, day, votes) in DATASET.items():
            clock.now = DAY[day]
            meme_id = await store.record_meme(new_meme(boxes=BOXES[name], template=template, user_id=name))
            for voter, value in votes.items():
                if value == 0:
                    await store.rate(meme_id, "telegram", voter, 1)
                    await store.rate(meme_id, "telegram", voter, 1)
                else:
                    await store.rate(meme_id, "telegram", voter, value)


def write_config(tmp_path: Path, location: Path | str) -> Path:
    """A config file whose [storage] is `location`: a SQLite file, or a PostgreSQL URL."""
    where = f'database = "{location}"' if isinstance(location, Path) else f'url = "{location}"'
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\n{where}\nuser_hash_key = "{KEY}"\n')
    return config


@pytest.fixture
def export_config(location: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file pointing at a database filled with DATASET."""
    for name in ("MEMEBOT_DATABASE", "MEMEBOT_DATABASE_URL", "MEMEBOT_USER_HASH_KEY"):
        monkeypatch.delenv(name, raising=False)
    asyncio.run(fill_dataset(location))
    return write_config(tmp_path, location)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize(
    ("args", "names"),
    [
        ([], "ABCD"),
        (["--min-score", "1"], "AD"),
        (["--min-score", "-2"], "ABCD"),
        (["--min-score", "4"], ""),
        (["--since", "2024-02-01"], "BCD"),
        (["--since", "2024-02-01T09:30"], "BCD"),  # inclusive, to the microsecond
        (["--since", "2024-02-01T09:30:00.000001"], "CD"),
        (["--since", "2024-02-01T10:30+01:00"], "BCD"),  # same instant in another zone
        (["--template", "drake"], "AB"),
        (["--template", "change-my-mind"], ""),
        (["--min-score", "0", "--since", "2024-01-15", "--template", "drake"], "B"),
    ],
)
def test_export_cli_filters_are_exact(
    export_config: Path, tmp_path: Path, fmt: str, args: list, names: str
) -> None:
    out = tmp_path / f"out.{fmt}"
    code = main(
        ["--config", str(export_config), "export", *args, "--format", fmt, "-o", str(out), "--no-progress"]
    )
    assert code == 0
    assert as_tuples(read_export(out)) == expected_rows(names)
    text = out.read_text(encoding="utf-8")
    assert "user_hash" not in text and "u1" not in text
    if fmt == "csv":
        assert text.splitlines()[0] == "template,boxes,up,down,score,model_id,created_at"
    else:
        assert all(json.loads(line)["template"] for line in text.splitlines())


def test_export_format_follows_the_extension_and_shows_progress(
    export_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rated.csv"
    assert main(["--config", str(export_config), "export", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8").startswith("template,boxes,")
    err = capsys.readouterr().err
    assert "4/4" in err and "exported 4 rated memes" in err


def test_export_cli_bad_input_is_a_clear_error(
    export_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(export_config), "export", "--since", "last tuesday", "-o", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err

    missing = tmp_path / "missing.toml"
    missing.write_text(f'[storage]\ndatabase = "{tmp_path / "nope.db"}"\n')
    assert main(["--config", str(missing), "export", "-o", str(tmp_path / "x.jsonl")]) == 1
    assert "no database" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists() and not (tmp_path / "x.jsonl").exists()


def test_read_export_rejects_files_that_are_not_exports(tmp_path: Path) -> None:
    not_csv = tmp_path / "notes.csv"
    not_csv.write_text("name,age\nbob,3\n")
    with pytest.raises(ExportError, match="header lacks"):
        read_export(not_csv)
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(
        '{"template": "drake", "boxes": ["a"], "up": 1, "down": 0, "score": 1, "model_id": "m"}\n{oops\n'
    )
    with pytest.raises(ExportError, match="bad.jsonl:2"):
        read_export(bad_line)
    no_boxes = tmp_path / "nobox.jsonl"
    no_boxes.write_text('{"template": "drake", "up": 1, "down": 0, "score": 1, "model_id": "m"}\n')
    with pytest.raises(ExportError, match="missing field 'boxes'"):
        read_export(no_boxes)
    with pytest.raises(ExportError, match="cannot read"):
        read_export(tmp_path / "absent.jsonl")


@pytest.mark.parametrize("location", ["sqlite"], indirect=True)
def test_db_stats_and_backup_cli(
    export_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(export_config), "db", "stats"]) == 0
    out = capsys.readouterr().out
    stats = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())
    assert stats["schema version"] == str(SCHEMA_VERSION)
    assert (stats["memes"], stats["ratings"], stats["up votes"], stats["down votes"]) == ("6", "8", "5", "3")
    assert stats["settings rows"] == "0"
    assert stats["file size"].endswith(("KiB", "MiB"))

    dest = tmp_path / "backup.db"
    assert main(["--config", str(export_config), "db", "backup", str(dest)]) == 0
    assert integrity(dest) == "ok"
    with sqlite3.connect(dest) as conn:
        assert conn.execute("SELECT COUNT(*) FROM memes").fetchone()[0] == 6
    conn.close()
    assert main(["--config", str(export_config), "db", "backup", str(dest)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["--config", str(export_config), "db", "backup", str(dest), "--force"]) == 0


@pytest.mark.parametrize("location", ["sqlite"], indirect=True)
def test_db_check_cli_says_whether_the_file_is_sound(
    export_config: Path, location: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(export_config), "db", "check"]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")

    database = location
    with sqlite3.connect(database) as conn:  # a big table, so its pages lie past the header
        conn.execute("CREATE TABLE padding (x TEXT)")
        conn.executemany("INSERT INTO padding VALUES (?)", [("y" * 500,) for _ in range(200)])
        conn.execute("CREATE INDEX padding_x ON padding (x)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # committed: now everything into the main file
    conn.close()
    data = bytearray(database.read_bytes())
    middle = len(data) // 2  # the table's pages: damaged, while the schema on page 1 still reads
    data[middle : middle + 8192] = b"\xff" * 8192
    database.write_bytes(bytes(data))
    assert main(["--config", str(export_config), "db", "check"]) == 1
    err = capsys.readouterr().err
    assert "damaged" in err or "malformed" in err


# --- leaderboards and forgetting ---------------------------------------------------------------


async def test_leaderboard_query_ranks_by_score_then_up_votes_then_newer(location: Path | str) -> None:
    clock = FakeClock(datetime(2024, 3, 1, tzinfo=UTC))
    async with await Storage.open(location, KEY, clock=clock) as store:

        async def meme(votes: list[int], day: int, platform: str = "telegram", **where: str) -> int:
            clock.now = datetime(2024, 3, day, tzinfo=UTC)
            made = new_meme(platform=platform, chat_id=where.get("chat", "chat-1"))
            made = replace(made, scope_id=where.get("scope", ""), author_name="Ann")
            meme_id = await store.record_meme(made)
            for voter, value in enumerate(votes):
                await store.rate(meme_id, platform, f"voter-{voter}", value)
            return meme_id

        a = await meme([1, 1, 1], day=1)  # +3 with 3 up
        b = await meme([1, 1, 1, 1, -1], day=2)  # +3 with 4 up: above a
        c = await meme([1, 1, 1], day=3)  # +3 with 3 up, newer than a: above it
        await meme([1, -1], day=4)  # 0: not liked more than disliked
        await meme([-1], day=5)
        await meme([], day=6)  # unrated
        await meme([1] * 9, day=7, chat="chat-2")  # another chat
        await meme([1] * 9, day=8, platform="discord")  # the same chat id on another platform

        top = await store.top_memes("telegram", "chat-1")
        assert [m.id for m in top] == [b, c, a]
        assert (top[0].score, top[0].author_name, top[0].scope_id) == (Score(4, 1), "Ann", "chat-1")
        since = datetime(2024, 3, 2, tzinfo=UTC)
        assert [m.id for m in await store.top_memes("telegram", "chat-1", since)] == [b, c]
        assert [m.id for m in await store.top_memes("telegram", "chat-1", n=1)] == [b]

        await store.set_message_deleted(b)  # a moderator took its message down
        assert (await store.get_meme(b)).message_deleted
        assert [m.id for m in await store.top_memes("telegram", "chat-1")] == [c, a]

        # A Discord server's board spans its channels.
        one = await meme([1], day=9, platform="discord", chat="channel-1", scope="server")
        two = await meme([1, 1], day=9, platform="discord", chat="channel-2", scope="server")
        assert [m.id for m in await store.top_memes("discord", "server")] == [two, one]
        assert (await store.get_meme(one)).chat_id == "channel-1"


async def test_forget_deletes_only_the_authors_meme_with_its_votes_and_picture(storage: Storage) -> None:
    mine = await storage.record_meme(new_meme(user_id="me"))
    await storage.rate(mine, "telegram", "fan", 1)
    with pytest.raises(NotAuthor):
        await storage.delete_meme(mine, "telegram", "someone-else")
    with pytest.raises(UnknownMeme):
        await storage.delete_meme(mine, "discord", "me")  # ids are shared; the meme is Telegram's
    with pytest.raises(UnknownMeme):
        await storage.delete_meme(mine + 100, "telegram", "me")
    gone = await storage.delete_meme(mine, "telegram", "me")
    assert (gone.id, gone.score) == (mine, Score(1, 0))
    assert await storage.get_meme(mine) is None
    assert (await storage.stats()).ratings == 0 and await storage.count_rated() == 0
    assert await storage.user_history("telegram", "me") == []

    # A kept picture goes with the last meme made on it.
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(buffer, "PNG")
    picture = Template.from_image_bytes(buffer.getvalue(), name="cat")
    kept = replace(new_meme(user_id="me"), template=picture, keep_picture=True)
    first, second = await storage.record_meme(kept), await storage.record_meme(kept)
    await storage.delete_meme(first, "telegram", "me")
    assert await storage.picture_template(picture.slug) is not None  # the second meme still uses it
    await storage.delete_meme(second, "telegram", "me")
    assert await storage.picture_template(picture.slug) is None


async def test_leaderboard_covers_memes_from_before_the_v7_migration(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
        conn.execute(
            "INSERT INTO memes VALUES (7, 'telegram', '-1001', 'abc123', 'drake', '', '[\"a\", \"b\"]', "
            "'sample', '{}', 'lstm-v1', '2024-05-01T12:00:00.000000Z', '555')"
        )
        conn.execute("INSERT INTO ratings VALUES (7, 'rater', 1, '2024-05-01T12:01:00.000000Z')")
    conn.close()
    async with await Storage.open(path, KEY) as store:
        (old,) = await store.top_memes("telegram", "-1001")
        assert (old.id, old.scope_id, old.author_name, old.media_ref) == (7, "-1001", "", None)
        await store.set_message_id(7, "555", "file-7")
        assert (await store.get_meme(7)).media_ref == "file-7"
        await store.set_message_id(7, "556")  # a later message id alone keeps the file_id
        assert (await store.get_meme(7)).media_ref == "file-7"
        assert (await store.meme_at("telegram", "-1001", "556")).id == 7
        assert await store.meme_at("telegram", "-1001", "555") is None


# --- PostgreSQL: its own ways, one schema with SQLite, and `memebot db migrate` ----------------


def columns_and_indices_sqlite(path: Path) -> dict[str, object]:
    with sqlite3.connect(path) as conn:
        tables = {
            table: [(r[1], bool(r[3]) or bool(r[5])) for r in conn.execute(f"PRAGMA table_info({table})")]
            for table in COPIED_TABLES
        }
        indices = {
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        }
    conn.close()
    return {"tables": tables, "indices": indices}


def columns_and_indices_postgres(server: PostgresServer, database: str) -> dict[str, object]:
    tables = {}
    for table in COPIED_TABLES:
        rows = server.sql(
            database,
            "SELECT column_name, is_nullable FROM information_schema.columns"
            f" WHERE table_name = '{table}' ORDER BY ordinal_position",
        ).splitlines()
        tables[table] = [(name, nullable == "NO") for name, nullable in (r.split("|") for r in rows)]
    indices = server.sql(
        database,
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey'",
    )
    return {"tables": tables, "indices": set(indices.split())}


async def test_postgres_gets_the_same_schema_as_sqlite_from_the_same_migrations(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    async with await Storage.open(tmp_path / "s.db", KEY), await Storage.open(postgres_url, KEY) as pg:
        assert (await pg.stats()).schema_version == SCHEMA_VERSION
    database = database_name(postgres_url)
    assert columns_and_indices_postgres(postgres_server, database) == columns_and_indices_sqlite(
        tmp_path / "s.db"
    )
    # SQLite's type words as PostgreSQL spells them (8-byte floats, bytes, ids numbered by the server).
    types = postgres_server.sql(
        database,
        "SELECT table_name || '.' || column_name || ' ' || data_type FROM information_schema.columns"
        " WHERE (table_name, column_name) IN (('pictures', 'band'), ('pictures', 'data'), ('memes', 'id'))"
        " ORDER BY 1",
    ).splitlines()
    assert types == ["memes.id integer", "pictures.band double precision", "pictures.data bytea"]
    assert postgres_server.sql(database, "SELECT version FROM schema_version").split() == [
        str(SCHEMA_VERSION)
    ]
    # Opening again migrates nothing and keeps the data.
    async with await Storage.open(postgres_url, KEY) as again:
        assert await again.record_meme(new_meme()) == 1
    async with await Storage.open(postgres_url, KEY) as again:
        assert (await again.get_meme(1)).boxes == ["top 0", "bottom 0"]


async def test_postgres_refusals_give_advice_and_never_show_the_password(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    messages = []

    async def refused(location: str, match: str, **options: bool) -> None:
        with pytest.raises(StorageError, match=match) as err:
            await Storage.open(location, KEY, **options)
        messages.append(str(err.value))

    await refused(postgres_url, "no memebot database", create=False)  # an empty database: tools refuse it
    async with await Storage.open(postgres_url, KEY) as store:
        assert store.location == postgres_url.replace(POSTGRES_TEST_PASSWORD, "***")
    postgres_server.sql(database_name(postgres_url), "UPDATE schema_version SET version = 99")
    await refused(postgres_url, "newer than this memebot")
    server_url = postgres_url.rsplit("/", 1)[0]
    await refused(f"{server_url}/no_such_database", "create it first")
    dead = f"postgresql://memebot:{POSTGRES_TEST_PASSWORD}@127.0.0.1:{free_port()}/memebot"
    await refused(dead, "cannot reach the PostgreSQL server")
    assert all(POSTGRES_TEST_PASSWORD not in message for message in messages)
    assert all("memebot:***@127.0.0.1" in message for message in messages)


def test_database_urls_are_shown_without_their_password() -> None:
    assert (
        redact_url("postgresql://bot:s3cret@db.example:5432/memes")
        == "postgresql://bot:***@db.example:5432/memes"
    )
    assert redact_url("postgres://db.example/memes?password=s3cret&sslmode=require") == (
        "postgres://db.example/memes?password=%2A%2A%2A&sslmode=require"
    )
    assert redact_url("postgresql://bot@localhost/memes") == "postgresql://bot@localhost/memes"
    assert url_passwords("postgresql://bot:s3cret@h/m?password=other") == ["s3cret", "other"]
    assert url_passwords("postgresql://h/m") == []


async def test_no_raw_user_id_in_the_postgres_servers_files(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    async with await Storage.open(postgres_url, KEY) as store:
        await write_memes_of_raw_ids(store)
    database = database_name(postgres_url)
    postgres_server.sql(database, "CHECKPOINT")  # the tables' pages, not just the WAL, on disk
    (oid,) = postgres_server.sql(
        database, "SELECT oid FROM pg_database WHERE datname = current_database()"
    ).split()
    data = postgres_server.base / "data"
    files = [*(data / "base" / oid).iterdir(), *(data / "pg_wal").glob("0*")]
    assert_private(b"".join(f.read_bytes() for f in files if f.is_file()))


@pytest.mark.parametrize("location", ["postgres"], indirect=True)
def test_db_cli_on_postgres_stats_check_and_backup_advice(
    export_config: Path, location: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(export_config), "db", "stats"]) == 0
    out = capsys.readouterr().out
    stats = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())
    assert (stats["database"], stats["engine"]) == (redact_url(location), "postgresql")
    assert (stats["memes"], stats["ratings"], stats["up votes"], stats["down votes"]) == ("6", "8", "5", "3")
    assert stats["schema version"] == str(SCHEMA_VERSION)
    assert stats["size on server"].endswith(("KiB", "MiB"))
    assert main(["--config", str(export_config), "db", "check"]) == 0
    assert ": ok (every row read back" in capsys.readouterr().out
    assert main(["--config", str(export_config), "db", "backup", str(tmp_path / "copy.db")]) == 1
    err = capsys.readouterr().err
    assert "pg_dump" in err and not (tmp_path / "copy.db").exists()
    assert POSTGRES_TEST_PASSWORD not in out + err


async def fill_everything(path: Path) -> None:
    """Every table `db migrate` copies, with the awkward values: a kept picture, settings, a
    deleted message, a media ref, an author name, unicode."""
    await fill_dataset(path)
    async with await Storage.open(path, KEY) as store:
        await store.set_settings("telegram", "chat-1", temperature=0.5, allowed_templates=["drake"])
        await store.set_settings("discord", "guild", lexicon=False)
        buffer = io.BytesIO()
        Image.new("RGB", (48, 40), (200, 10, 10)).save(buffer, "PNG")
        picture = Template.from_image_bytes(buffer.getvalue(), name="red")
        meme = replace(new_meme(7), template=picture, keep_picture=True, author_name="Zoë", scope_id="guild")
        meme_id = await store.record_meme(meme)
        await store.set_message_id(meme_id, "m-1", "file-id-1")
        await store.set_message_deleted(meme_id)


def test_db_migrate_copies_sqlite_into_postgres_with_counts_checked(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("MEMEBOT_DATABASE", "MEMEBOT_USER_HASH_KEY"):
        monkeypatch.delenv(name, raising=False)
    source = tmp_path / "bot.db"
    asyncio.run(fill_everything(source))
    config = write_config(tmp_path, source)
    # The URL from the environment, as the README advises: its password stays off the command line.
    monkeypatch.setenv("MEMEBOT_DATABASE_URL", postgres_url)
    assert main(["--config", str(config), "db", "migrate"]) == 0
    captured = capsys.readouterr()
    table = [line.split() for line in captured.out.splitlines()]
    assert table == [
        ["table", "source", "target"],
        ["memes", "7", "7", "ok"],
        ["ratings", "8", "8", "ok"],
        ["settings", "2", "2", "ok"],
        ["pictures", "1", "1", "ok"],
    ]
    assert "every count matches" in captured.err and POSTGRES_TEST_PASSWORD not in captured.err

    async def compare() -> None:
        async with await Storage.open(source, KEY) as old, await Storage.open(postgres_url, KEY) as new:
            for meme_id in range(1, 8):
                assert await new.get_meme(meme_id) == await old.get_meme(meme_id)
            for scope in (("telegram", "chat-1"), ("discord", "guild")):
                assert await new.get_settings(*scope) == await old.get_settings(*scope)
            slug = (await old.get_meme(7)).template
            assert (await new.picture_template(slug)).image == (await old.picture_template(slug)).image
            assert await new.top_memes("telegram", "chat-1") == await old.top_memes("telegram", "chat-1")
            # Ratings and history still find their users: the hashes were copied as they were.
            assert await new.user_history("telegram", "A") == await old.user_history("telegram", "A")
            assert await new.rate(1, "telegram", "u1", 1) == Score(2, 0)  # u1's vote withdrawn
            assert await new.record_meme(new_meme(8)) == 8  # new ids follow the copied ones

    asyncio.run(compare())
    # Into a database that holds data already: refused, nothing written.
    assert main(["--config", str(config), "db", "migrate", "--to", postgres_url]) == 1
    assert "already holds memebot data" in capsys.readouterr().err


def test_db_migrate_fails_when_the_counts_differ(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("MEMEBOT_DATABASE", "MEMEBOT_DATABASE_URL", "MEMEBOT_USER_HASH_KEY"):
        monkeypatch.delenv(name, raising=False)
    source = tmp_path / "bot.db"
    asyncio.run(fill_dataset(source))
    copy_to = Storage.copy_to

    async def copy_and_lose_a_vote(self: Storage, target: Storage, **options: object) -> None:
        await copy_to(self, target, **options)
        async with target._write() as db:  # as if the bot voted on the source meanwhile
            await db.execute(
                "DELETE FROM ratings WHERE meme_id = 1 AND user_hash = ?", (self.user_hash("telegram", "u1"),)
            )

    monkeypatch.setattr(Storage, "copy_to", copy_and_lose_a_vote)
    config = write_config(tmp_path, source)
    assert main(["--config", str(config), "db", "migrate", "--to", postgres_url]) == 1
    captured = capsys.readouterr()
    assert ["ratings", "8", "7", "MISMATCH"] in [line.split() for line in captured.out.splitlines()]
    assert "row counts differ" in captured.err
