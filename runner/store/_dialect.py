"""What the store's SQL says differently on PostgreSQL, in one place.

The store writes every statement once, in the SQL both databases take, with SQLite's `?`
placeholders; the PostgreSQL connection (`_pg.py`) passes each statement through `postgres`
here before psycopg sees it, and remembers the answer per statement text (a transition's
text is a constant, so the cache holds a few hundred entries at most).

- placeholders: `?` becomes `%s`, and a literal `%` becomes `%%` (psycopg's own placeholder
  mark), except in a statement sent with no parameters, which psycopg does not parse;
- `BEGIN IMMEDIATE` (SQLite: take the one write lock now) becomes `BEGIN`: PostgreSQL locks
  rows, and the row every reservation updates is the ledger's (`batch`, id 1), so two
  workers' reservations queue on that row's lock and each re-reads the row it waited for
  before its `committed_buzz + estimate <= cap_buzz` guard decides (READ COMMITTED re-checks
  an UPDATE's condition on the newest version of a row it waited for);
- `?` inside a quoted string or a quoted name stays as it is.

`RETURNING`, `ON CONFLICT ... DO NOTHING / DO UPDATE`, `COALESCE`, `||` and `UPDATE ... FROM`
are the same in both and are not rewritten. What cannot be said the same way has a module of
its own: the schema (`_pg_migrations.py`) and the plan's bulk merge (`_pg_plan.py`, SQLite's
runs on `rowid` and an attached in-memory database).
"""

from __future__ import annotations

from functools import lru_cache

_QUOTES = ("'", '"')


@lru_cache(maxsize=4096)
def postgres(sql: str, *, with_params: bool) -> str:
    """`sql` as PostgreSQL and psycopg take it (see above)."""
    stripped = sql.strip()
    if stripped.upper() == "BEGIN IMMEDIATE":
        return "BEGIN"
    if not with_params:
        return sql
    out: list[str] = []
    quote: str | None = None
    for char in sql:
        if quote is not None:
            if char == quote:
                quote = None
            out.append("%%" if char == "%" else char)
        elif char in _QUOTES:
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)
