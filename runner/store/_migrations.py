"""The batch database's schema as numbered migrations; `store.py` applies them in order.

`PRAGMA user_version` holds how many have run. Append a new string to change the schema;
never edit one that has shipped. A database whose version is past `SCHEMA_VERSION` was
written by a newer zbatch: it is refused (`newer_schema`) before anything in it changes,
since this zbatch cannot know what the newer columns and states mean.
"""

from __future__ import annotations

from pathlib import Path

from runner.errors import NewerSchema

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE batch (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        name TEXT NOT NULL,
        tag TEXT NOT NULL,
        cap_buzz INTEGER NOT NULL,
        committed_buzz INTEGER NOT NULL DEFAULT 0,
        generation INTEGER NOT NULL DEFAULT 0,
        manifest_sha256 TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE cells (
        key TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        replica INTEGER NOT NULL,
        model TEXT NOT NULL,
        request TEXT NOT NULL,
        vars TEXT NOT NULL,
        estimate_buzz INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        generation INTEGER NOT NULL
    );
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        cell_key TEXT NOT NULL REFERENCES cells (key),
        attempt INTEGER NOT NULL,
        external_id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        reserved_buzz INTEGER NOT NULL DEFAULT 0,
        charged_buzz INTEGER NOT NULL DEFAULT 0,
        workflow_id TEXT,
        reason TEXT,
        updated_at TEXT NOT NULL,
        UNIQUE (cell_key, attempt)
    );
    CREATE INDEX attempts_by_state ON attempts (state, id);
    CREATE TABLE images (
        attempt_id INTEGER NOT NULL REFERENCES attempts (id),
        idx INTEGER NOT NULL,
        blob_id TEXT,
        state TEXT NOT NULL,
        path TEXT,
        sha256 TEXT,
        size_bytes INTEGER,
        width INTEGER,
        height INTEGER,
        reason TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (attempt_id, idx)
    );
    CREATE INDEX images_by_state ON images (state, attempt_id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        attempt_id INTEGER,
        from_state TEXT,
        to_state TEXT NOT NULL,
        buzz INTEGER,
        detail TEXT
    );
    """,
    # 2: `zbatch cancel` (docs/operations.md): when the batch was canceled; NULL = submitting.
    """
    ALTER TABLE batch ADD COLUMN canceled_at TEXT;
    """,
    # 3: a fingerprint of what decides the cells of the last complete plan, so a resume of
    # an unchanged manifest skips re-planning every cell (docs/states.md).
    """
    ALTER TABLE batch ADD COLUMN plan_fingerprint TEXT;
    """,
    # 4: the run settings `zbatch run` saves from the manifest (captions, limits, attempts),
    # so `zbatch retry` and `verify --repair` run the batch as its manifest says
    # (store/_settings.py). A record migrated from 3 has no row until the next `zbatch run`.
    """
    CREATE TABLE run_settings (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        captions TEXT NOT NULL CHECK (captions IN ('none', 'txt')),
        in_flight INTEGER NOT NULL CHECK (in_flight >= 1),
        submit_per_s REAL NOT NULL CHECK (submit_per_s > 0),
        downloads INTEGER NOT NULL CHECK (downloads >= 1),
        attempts INTEGER NOT NULL CHECK (attempts >= 1),
        saved_at TEXT NOT NULL
    );
    """,
    # 5: the manifest's own budget when the batch last ran, so a plain `zbatch run` keeps the
    # last cap given (a `--budget`) unless the manifest's budget changed (docs/operations.md);
    # the manifest's revision, the revision that last listed each cell, and whether a cell the
    # manifest no longer lists stays in the dataset (`--keep`) or left it (`--replace`).
    """
    ALTER TABLE batch ADD COLUMN manifest_cap_buzz INTEGER;
    ALTER TABLE batch ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE cells ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE cells ADD COLUMN standing TEXT NOT NULL DEFAULT 'listed'
        CHECK (standing IN ('listed', 'kept', 'replaced'));
    """,
    # 6: the manifest's caption template (`captions: {template: ...}`), so every command that
    # writes the dataset or exports it renders the captions the manifest asked for; a record
    # made before has the template captions always had, the prompt.
    """
    ALTER TABLE run_settings ADD COLUMN caption_template TEXT NOT NULL DEFAULT '{prompt}';
    """,
    # 7: an attempt's externalId is derived from its cell and number (`identity.external_id`,
    # the one spelling it has ever had), not stored: the column is computed when read, and
    # its UNIQUE index, which `UNIQUE (cell_key, attempt)` already implied, is gone (a planned
    # cell wrote 40 bytes and one index entry fewer: docs/performance.md, lever f). The table
    # is rebuilt (SQLite drops neither a UNIQUE column nor its index in place), its rows and
    # ids kept; `migrate` runs this one with foreign keys off and checks them before COMMIT.
    # A record whose stored externalId were not that spelling would stop here, at schema 6,
    # rather than have its in-flight workflows looked up under another name: the check
    # table's CHECK refuses a count other than 0.
    """
    CREATE TEMP TABLE migration_7_check (
        stored_external_ids_not_derived INTEGER NOT NULL
        CHECK (stored_external_ids_not_derived = 0)
    );
    INSERT INTO migration_7_check SELECT count(*) FROM attempts
        WHERE external_id IS NOT ('zb-' || cell_key || '-a' || attempt);
    DROP TABLE migration_7_check;
    CREATE TABLE attempts_v7 (
        id INTEGER PRIMARY KEY,
        cell_key TEXT NOT NULL REFERENCES cells (key),
        attempt INTEGER NOT NULL,
        external_id TEXT GENERATED ALWAYS AS ('zb-' || cell_key || '-a' || attempt) VIRTUAL,
        state TEXT NOT NULL,
        reserved_buzz INTEGER NOT NULL DEFAULT 0,
        charged_buzz INTEGER NOT NULL DEFAULT 0,
        workflow_id TEXT,
        reason TEXT,
        updated_at TEXT NOT NULL,
        UNIQUE (cell_key, attempt)
    );
    INSERT INTO attempts_v7 (id, cell_key, attempt, state, reserved_buzz, charged_buzz,
        workflow_id, reason, updated_at)
        SELECT id, cell_key, attempt, state, reserved_buzz, charged_buzz, workflow_id, reason,
        updated_at FROM attempts ORDER BY id;
    DROP TABLE attempts;
    ALTER TABLE attempts_v7 RENAME TO attempts;
    CREATE INDEX attempts_by_state ON attempts (state, id);
    """,
    # 8: workers draining one batch together (docs/design/scale-out.md, section 3): each
    # worker's row and lease, in database time (seconds since the epoch, as the database's
    # clock tells them: hosts' clocks are never compared), and each attempt's owner and the
    # epoch of its claim, which every transition of an owned attempt is fenced by. SQLite
    # never has more than one worker; the tables are the same so one code path serves both.
    """
    CREATE TABLE workers (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        out TEXT,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        lease_until REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'dead', 'left'))
    );
    ALTER TABLE attempts ADD COLUMN owner INTEGER REFERENCES workers (id);
    ALTER TABLE attempts ADD COLUMN owner_epoch INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX attempts_by_owner ON attempts (owner, state);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def newer_schema(path: Path, version: int) -> NewerSchema:
    """The refusal of a database at schema `version` > `SCHEMA_VERSION`."""
    return NewerSchema(
        f"{path.name} was written by a newer zbatch (schema {version}, this zbatch knows up to"
        f" {SCHEMA_VERSION}); upgrade zbatch ({path} was left as it was)"
    )
