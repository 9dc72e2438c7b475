"""Shared fixtures: every async test runs on anyio's asyncio backend (the store's writer thread
hands results back on asyncio futures),
and every test starts with structlog's defaults.

`runner.cli._main.main` configures logging for the process; under pytest that points structlog at
one test's captured stderr, which pytest closes afterwards, so a later test that logs would
write to a closed file. Resetting around each test keeps the tests independent of order.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

# real servers (PostgreSQL, moto's S3) as fixtures: tests/services.py
pytest_plugins = ["tests.services"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _strict_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `main(...)` of the suite fails on an exit code its command does not declare."""
    from runner.cli import _main

    monkeypatch.setattr(_main, "STRICT_EXIT_CODES", True)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
