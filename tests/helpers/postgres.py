"""A real PostgreSQL server for the tests, started in a temporary folder on a free local port.

`PostgresServer.start()` runs initdb and pg_ctl from the server binaries it finds: on PATH,
else Debian's /usr/lib/postgresql/<version>/bin (the `postgresql` package that
scripts/setup.sh installs; Debian keeps initdb off PATH). No binaries: `find_bin_dir` returns
None and the tests skip, saying so (tests/conftest.py).

PostgreSQL refuses to run as root, and CI runs as root: then initdb and the server run as the
`postgres` user the Debian package creates (else `nobody`), through subprocess's user/group
switch, in a folder under /tmp handed to that user. The tests still connect as the database
user `memebot` over TCP on 127.0.0.1, with trust authentication: the server is reachable only
from this machine and lives for one test session. Durability is off (fsync, synchronous
commit, full-page writes): a crash loses nothing the tests need, and commits are much faster.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "memebot"  # the database superuser initdb creates
START_TIMEOUT_S = 60
INSTALL_HINT = (
    "install PostgreSQL's server (Debian: apt-get install postgresql, which scripts/setup.sh does "
    "when run as root) to run them"
)


def find_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: PATH first, then Debian's newest version."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres", "createdb", "psql")):
            return folder
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: Path
    base: Path  # holds data/ (the cluster), socket/ and server.log
    port: int = 0
    run_as: pwd.struct_passwd | None = None  # the server's user when we are root
    databases_made: int = 0

    @classmethod
    def start(cls, bin_dir: Path) -> PostgresServer:
        run_as = None
        if os.geteuid() == 0:
            try:
                run_as = pwd.getpwnam("postgres")
            except KeyError:
                run_as = pwd.getpwnam("nobody")
        # Not pytest's tmp_path: that is a root-only folder the server's user could not enter (nor,
        # as root, $TMPDIR, which may be one too): /tmp lets anyone through to a folder of theirs.
        base = Path(tempfile.mkdtemp(prefix="memebot-postgres-", dir="/tmp" if run_as else None))
        if run_as is not None:
            os.chown(base, run_as.pw_uid, run_as.pw_gid)
        server = cls(bin_dir, base, run_as=run_as)
        try:
            server._run("initdb", "-D", str(base / "data"), "-U", USER, "-A", "trust", "-E", "UTF8",
                        "--locale=C", "--no-sync")  # fmt: skip
            (base / "socket").mkdir()
            if run_as is not None:
                os.chown(base / "socket", run_as.pw_uid, run_as.pw_gid)
            for attempt in range(3):  # the free port may be taken between finding and binding it
                server.port = free_port()
                options = (
                    f"-p {server.port} -k {base / 'socket'} -c listen_addresses=127.0.0.1"
                    " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                )
                try:
                    server._run("pg_ctl", "-D", str(base / "data"), "-l", str(base / "server.log"), "-o", options,
                                "-w", "-t", str(START_TIMEOUT_S), "start")  # fmt: skip
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
        except BaseException:
            server.remove()
            raise
        return server

    def _run(self, tool: str, *args: str) -> str:
        as_user = {}
        if self.run_as is not None:
            as_user = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        done = subprocess.run(
            [str(self.bin_dir / tool), *args],
            cwd=self.base,  # a folder the server's user may enter
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
            **as_user,
        )
        if done.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")
        return done.stdout

    def url(self, database: str, password: str = "") -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database's name: each test gets its own."""
        self.databases_made += 1
        name = f"test_{self.databases_made}"
        self.sql("postgres", f"CREATE DATABASE {name}")
        return name

    def sql(self, database: str, statement: str) -> str:
        """Run SQL through psql (as the tests' client, not the server's user); its output."""
        done = subprocess.run(
            [str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", database,
             "-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", statement],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop")
        finally:
            self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
