"""The run settings a batch remembers: captions and their template, limits and retries, as its
manifest set them.

`zbatch run` saves them when it plans the batch (`save_run_settings`, one row, replaced on
every run), so the commands that take only the output folder (`zbatch retry`,
`zbatch verify --repair`) run the batch as its manifest says, unless a flag overrides a
setting. A record made before migration 4 has no row: `read_run_settings` answers None and
the command says which defaults it uses (docs/operations.md, "Run settings").

Functions of the connection, called inside the store's transaction or read lock; only the
store calls them (`Store.save_run_settings`, `Store.run_settings`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from runner.store._sql import cursor
from runner.store._transitions import Tx


@dataclass(frozen=True)
class RunSettings:
    """A batch's captions mode, limits and attempts per cell, as the manifest gave them."""

    captions: str  # none | txt
    in_flight: int  # workflows submitted and not yet terminal
    submit_per_s: float  # submissions a second
    downloads: int  # images downloaded at once
    attempts: int  # attempts per cell (`retries.attempts`)
    caption_template: str = "{prompt}"  # what a caption holds (`captions: {template: ...}`)

    def describe(self) -> str:
        """`captions txt, 8 in flight, 2 submissions/s, 4 downloads, 3 attempts per cell`."""
        return (
            f"captions {self.captions}, {self.in_flight} in flight,"
            f" {self.submit_per_s:g} submissions/s, {self.downloads} downloads,"
            f" {self.attempts} attempt{'s' if self.attempts != 1 else ''} per cell"
        )


def save_run_settings(tx: Tx, settings: RunSettings) -> None:
    """Record `settings` as the batch's (replacing what an earlier run saved)."""
    tx.db.execute(
        "INSERT INTO run_settings"
        " (id, captions, in_flight, submit_per_s, downloads, attempts, caption_template,"
        " saved_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET captions = excluded.captions,"
        " in_flight = excluded.in_flight, submit_per_s = excluded.submit_per_s,"
        " downloads = excluded.downloads, attempts = excluded.attempts,"
        " caption_template = excluded.caption_template, saved_at = excluded.saved_at",
        (
            settings.captions,
            settings.in_flight,
            settings.submit_per_s,
            settings.downloads,
            settings.attempts,
            settings.caption_template,
            tx.now,
        ),
    )


def read_run_settings(db: sqlite3.Connection) -> RunSettings | None:
    """The batch's recorded settings, or None for a record made before they were kept."""
    with cursor(
        db,
        "SELECT captions, in_flight, submit_per_s, downloads, attempts, caption_template"
        " FROM run_settings WHERE id = 1",
    ) as cur:
        row = cur.fetchone()
    if row is None:
        return None
    return RunSettings(
        captions=str(row[0]),
        in_flight=int(row[1]),
        submit_per_s=float(row[2]),
        downloads=int(row[3]),
        attempts=int(row[4]),
        caption_template=str(row[5]),
    )
