"""The real servers the scale-out tests stand on (tests/services.py), and the two primitives
issue 18 builds on, checked on those servers rather than assumed:

- PostgreSQL: two workers claiming rows with `FOR UPDATE SKIP LOCKED` never get the same
  row, and a row one of them holds is free again once its transaction ends; what was
  committed survives a restart of the server, and a client sees the restart as an error.
- S3 (moto): an object is there whole after one PUT, or not at all; a listing finds it.
"""

from __future__ import annotations

import hashlib
import uuid

import psycopg
import pytest

from tests.services import MotoS3, PostgresCluster


def _database(cluster: PostgresCluster) -> str:
    """A fresh database on the session's cluster; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return cluster.dsn.rsplit("/", 1)[0] + "/" + name


def test_skip_locked_hands_each_row_to_one_worker(pg_cluster: PostgresCluster) -> None:
    url = _database(pg_cluster)
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute("CREATE TABLE cells (id int PRIMARY KEY, owner text)")
        setup.execute("INSERT INTO cells SELECT g, NULL FROM generate_series(1, 10) g")
    claim = "SELECT id FROM cells WHERE owner IS NULL ORDER BY id LIMIT 3 FOR UPDATE SKIP LOCKED"
    with psycopg.connect(url) as a, psycopg.connect(url) as b:
        got_a = [r[0] for r in a.execute(claim).fetchall()]
        got_b = [r[0] for r in b.execute(claim).fetchall()]  # a still holds its three
        assert got_a == [1, 2, 3]
        assert got_b == [4, 5, 6]
        a.rollback()  # a dies before recording its claim: its rows are free again
        got_b_again = [r[0] for r in b.execute(claim).fetchall()]
        assert got_b_again == [1, 2, 3]  # freed, and taken by the worker still alive
        got_a_again = [r[0] for r in a.execute(claim).fetchall()]
        assert got_a_again == [7, 8, 9]  # b holds 1-6 until its transaction ends


def test_committed_rows_survive_a_restart_and_clients_see_it(
    pg_cluster: PostgresCluster,
) -> None:
    url = _database(pg_cluster)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, committed int)")
        conn.execute("INSERT INTO ledger VALUES (1, 42)")
        pg_cluster.restart()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT committed FROM ledger")
    with psycopg.connect(url) as again:
        row = again.execute("SELECT committed FROM ledger WHERE id = 1").fetchone()
    assert row == (42,)


def test_one_put_is_one_whole_object(s3_server: MotoS3) -> None:
    fs = s3_server.filesystem()
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)  # type: ignore[attr-defined]
    body = bytes(range(256)) * 4096  # 1 MiB
    fs.pipe_file(f"{bucket}/images/ab/cell_0.jpeg", body)  # type: ignore[attr-defined]
    got = fs.cat_file(f"{bucket}/images/ab/cell_0.jpeg")  # type: ignore[attr-defined]
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest()
    listed = fs.find(f"{bucket}/images")  # type: ignore[attr-defined]
    assert listed == [f"{bucket}/images/ab/cell_0.jpeg"]
    assert not fs.exists(f"{bucket}/images/ab/cell_1.jpeg")  # type: ignore[attr-defined]
