"""A store URL (`--store`, `ZBATCH_STORE`): recognised, and shown without its secrets.

Apart from `_pg_open.py` so that recognising one needs no PostgreSQL driver: psycopg is an
extra (`zbatch[postgresql]`), imported only when a store URL is opened.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")


def is_store_url(location: object) -> bool:
    """Whether `location` (a `--store` or `ZBATCH_STORE` value) names a PostgreSQL batch."""
    if not isinstance(location, str):
        return False
    try:
        return urlsplit(location).scheme in SCHEMES
    except ValueError:  # not a URL at all (an unbalanced `[`)
        return False


def redact(url: str) -> str:
    """`url` without its password and query: what a message may show of it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a number: libpq refuses it too; shown as nothing
        port = None
    netloc = host if port is None else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(message: str, url: str) -> str:
    """`message` with any secret of `url` (password, query) cut out."""
    parts = urlsplit(url)
    for secret in (url, parts.password, parts.query):
        if secret:
            message = message.replace(secret, "***")
    return message
