"""Real servers for the tests that need them, started by those tests and stopped after.

- `PostgresCluster`: a throwaway PostgreSQL cluster from the machine's Debian packages
  (`initdb`, `pg_ctl`) in a temp folder, listening on a free loopback port. initdb refuses to
  run as root, so as root the cluster is made and run by the `postgres` system user; the
  folder is handed to that user first. `restart()` is a real stop and start (the cluster
  torture restarts PostgreSQL mid-run).
- `MotoS3`: moto's S3 in server mode on a free loopback port (how s3fs's own test suite
  runs), with fake credentials set in the environment of the clients the tests make, never
  real ones.

Both are plain classes (start, stop) so the torture harness can use them outside pytest;
`tests/conftest.py` wraps them as fixtures.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.store import Store, open_store
from runner.store._dialect import postgres

_PG_USER = "postgres"
_DATABASES = itertools.count(1)


def free_port() -> int:
    """A TCP port nobody listens on at this moment, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_bin_dir() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian puts them under
    /usr/lib/postgresql/<major>/bin, off PATH), or None when PostgreSQL is not installed."""
    roots = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if roots:
        return roots[0].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster of the tests' own, in `root`, on 127.0.0.1:`port`."""

    root: Path
    port: int = field(default_factory=free_port)
    database: str = "zbatch"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        """The connection URL, as `--store` takes it (no password: loopback trust)."""
        return f"postgresql://{_PG_USER}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise RuntimeError(
                "PostgreSQL is not installed: apt-get install postgresql (.ci/run does)"
            )
        command = [str(bin_dir / program), *args]
        as_postgres = os.geteuid() == 0
        if as_postgres:  # initdb and postgres refuse to run as root
            command = ["runuser", "-u", _PG_USER, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=120, cwd=self.root
        )

    def start(self) -> PostgresCluster:
        """Make the cluster (first time) and start it; return when it takes connections."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam(_PG_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", _PG_USER, "--auth=trust",
                "--no-sync", "--encoding=UTF8", "--locale=C",
            )  # fmt: skip
        self._pg_ctl_start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), self.database)
        return self

    def _pg_ctl_start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.root} -c fsync=on"
        )
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
            "-l", str(self.root / "server.log"), "-o", options,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`mode`: smart, fast or immediate, as pg_ctl says)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data))

    def restart(self, mode: str = "fast") -> None:
        """Stop the server and start it again on the same port: clients lose their
        connections; what was committed is there after."""
        self.stop(mode)
        self._pg_ctl_start()

    @contextlib.contextmanager
    def new_database(self) -> Iterator[str]:
        """A new empty database in this cluster (its URL), dropped on exit."""
        import psycopg

        name = f"t{next(_DATABASES)}_{os.getpid()}"
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        try:
            yield self.dsn.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with psycopg.connect(self.dsn, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def remove(self) -> None:
        """Stop the server (if running) and delete the cluster's folder."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster(root: Path) -> Iterator[PostgresCluster]:
    """A started cluster in `root`, removed on exit."""
    cluster = PostgresCluster(root)
    try:
        yield cluster.start()
    finally:
        cluster.remove()


@dataclass(frozen=True)
class StoreBackend:
    """A store test's backend (`store_backend`): its name and where its batch is."""

    name: str  # sqlite | postgresql
    location: Path | str  # the database file, or the database's URL

    async def open(self, **options: Any) -> Store:
        """Open the batch (`open_store`), with `Store.open`'s options."""
        return await open_store(self.location, **options)

    def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """The rows of `sql` (SQLite's `?` placeholders), read on a connection of its own."""
        if self.name == "sqlite":
            db = sqlite3.connect(self.location)
            try:
                return db.execute(sql, params).fetchall()
            finally:
                db.close()
        import psycopg

        with psycopg.connect(str(self.location)) as pg:
            text = postgres(sql, with_params=bool(params))
            return pg.execute(text, params or None).fetchall()


# fake credentials for moto: the clients the tests make read them from these variables
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


@dataclass
class MotoS3:
    """moto's S3 server on 127.0.0.1:`port`."""

    port: int = field(default_factory=free_port)
    _server: object | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server
        deadline = time.monotonic() + 30
        while True:  # the server thread binds its socket a moment after start() returns
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None

    def filesystem(self) -> object:
        """An s3fs filesystem on this server, with the fake credentials, no cache."""
        import s3fs

        return s3fs.S3FileSystem(
            key=S3_TEST_ENV["AWS_ACCESS_KEY_ID"],
            secret=S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={
                "endpoint_url": self.endpoint,
                "region_name": S3_TEST_ENV["AWS_DEFAULT_REGION"],
            },
            skip_instance_cache=True,
            use_listings_cache=False,
        )


@contextlib.contextmanager
def moto_s3() -> Iterator[MotoS3]:
    """A started moto S3 server, stopped on exit."""
    server = MotoS3()
    try:
        yield server.start()
    finally:
        server.stop()


# -- pytest fixtures (tests/conftest.py loads this module as a plugin) -------------------

try:
    import pytest
except ImportError:  # the torture harness imports the classes without pytest
    pass
else:

    @pytest.fixture(scope="session")
    def pg_cluster() -> Iterator[PostgresCluster]:
        """One PostgreSQL cluster for the session; each test makes its own database.

        Its folder is straight under the system's temp folder: pytest's own temp folders
        are private to this user, and the server runs as `postgres`."""
        with postgres_cluster(Path(tempfile.mkdtemp(prefix="zbatch-pg-"))) as cluster:
            yield cluster

    @pytest.fixture(scope="session")
    def s3_server() -> Iterator[MotoS3]:
        """One moto S3 server for the session; each test makes its own bucket."""
        with moto_s3() as server:
            yield server

    @pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
    def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
        """Where a store test keeps its batch: a `batch.sqlite` in its temp folder, or a
        database of its own in the session's PostgreSQL cluster (`pg_cluster`), dropped
        after. The store tests take it, so each runs on both backends."""
        if request.param == "sqlite":
            yield StoreBackend("sqlite", tmp_path / "batch.sqlite")
            return
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        with cluster.new_database() as url:
            yield StoreBackend("postgresql", url)
