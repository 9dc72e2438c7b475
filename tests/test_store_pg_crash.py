"""kill -9 of `zbatch run` with its record in PostgreSQL: the crash test's invariants hold.

tests/crash/test_kill.py's scenario with a binding cap, the runner started with
ZBATCH_STORE (`harness.run_scenario(store=...)`): after every kill and at the end, one
workflow per externalId, no intent the service saw that the record had not committed first,
the Buzz spent and committed never past the cap, every recorded image on disk with its
sha256, and the token in no file or output. A killed runner's session (and its lock) ends
when the server reads the closed socket; the next runner waits for the lock a moment
(`_pg_open.LOCK_WAIT`) rather than overtaking that.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crash.harness import EXIT_CAP, capped_scenario, run_scenario
from tests.services import PostgresCluster


@pytest.mark.postgresql
def test_sigkill_with_the_record_in_postgresql_holds_every_invariant(
    tmp_path: Path, pg_cluster: PostgresCluster
) -> None:
    with pg_cluster.new_database() as url:
        report = run_scenario(capped_scenario("pg-capped", seed=14, kills=6), tmp_path, store=url)
    cap = report.scenario.cap_buzz
    assert report.violations == []
    assert report.kills >= 4, "most runs should be killed mid-work, not finish first"
    assert report.duplicates == 0
    assert report.final_rc == EXIT_CAP
    assert report.max_net_buzz <= cap
    assert report.max_committed_buzz <= cap
    assert report.unsubmitted > 0
    assert not (tmp_path / report.scenario.out / "batch.sqlite").exists()
