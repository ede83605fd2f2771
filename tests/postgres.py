"""A throw-away PostgreSQL cluster for the storage tests: initdb + pg_ctl in a temp dir, on a free port.

    def test_something(postgres_url):          # a fresh, empty database per test (fixtures registered in conftest)
        store = ArenaStore(postgres_url)

    def test_both(db_url):                     # the test runs on SQLite and on PostgreSQL
        store = ArenaStore(db_url)

The binaries come from Debian's ``postgresql`` package (``make test`` installs it when it runs as root with
apt-get): ``/usr/lib/postgresql/<version>/bin``, else ``pg_ctl`` on the PATH. initdb refuses to run as root, so
as root the cluster runs as the ``postgres`` user (``runuser``) in a temp dir it owns. Where PostgreSQL is not
installed the tests that need it skip, naming the reason; with ``CI=true`` they fail instead.
The cluster runs with ``fsync=off`` and listens on a Unix socket in its own temp dir only (no TCP port, so two
test runs on one machine never race for a port): it is thrown away after the session.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required when CI=true: {reason}")
    pytest.skip(f"PostgreSQL storage tests skipped: {reason} (install Debian's postgresql, e.g. `make postgres`)")


def find_bindir() -> Path | None:
    """The folder with initdb and pg_ctl: the newest /usr/lib/postgresql/*/bin, else the PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path and shutil.which("initdb") else None


class Cluster:
    """A PostgreSQL server of its own: ``url(dbname)`` for SQLAlchemy, ``create_database()`` for a fresh one."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="arena-pg-", dir="/tmp"))  # short: a socket path has < 108 bytes
        self.data = self.root / "data"
        self.port = 5432  # names the socket file in self.root; no TCP port is opened
        self.user = "arena"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        full = [str(self.bindir / cmd[0]), *cmd[1:]]
        if self.as_root:
            full = ["runuser", "-u", "postgres", "--", *full]
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def start(self) -> None:
        r = self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-sync",
                      "--locale=C")
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()[-500:]}")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses='' -c fsync=off -c max_connections=200"
        r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts, "-w",
                      "-t", "60", "start")
        if r.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-800:] if (self.root / "server.log").exists() \
                else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()[-300:]} {log}")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@/{dbname}?host={self.root}&port={self.port}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host={self.root} port={self.port} user={self.user} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One throw-away cluster for the test session (skips, or fails under CI=true, without PostgreSQL)."""
    bindir = find_bindir()
    if bindir is None:
        _unavailable("initdb/pg_ctl not found in /usr/lib/postgresql/*/bin or on the PATH")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg package is not installed (pip install 'psycopg[binary]')")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _unavailable("running as root without runuser, and initdb refuses root")
    cluster = Cluster(bindir)
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired, LookupError) as e:
        cluster.stop()
        _unavailable(f"could not start a throw-away cluster ({e})")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> str:
    """A fresh empty database on the session's cluster."""
    return postgres_cluster.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'votes' / 'arena.sqlite3'}"
    return request.getfixturevalue("postgres_url")
