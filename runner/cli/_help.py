"""What `zbatch --help` says beyond the commands: the documentation's address, the
environment variables zbatch reads, and the color and encoding rules every command obeys.

An installed zbatch has no repository around it, so help texts never cite `docs/…` or
`jobs/…` paths: they point at `zbatch init` (which writes the demo manifest, its prompts and
the fault profiles) and at `doc_url(page)`, built from `REPOSITORY_URL` (the same address as
pyproject's `[project.urls]`; tests/test_cli_conventions.py keeps the two equal).
"""

from __future__ import annotations

import codecs
import sys
from typing import IO, TYPE_CHECKING

from runner.log import color_for, color_mode

if TYPE_CHECKING:
    from rich.console import Console

# The one place the project's address is written (pyproject's [project.urls] repeats it).
REPOSITORY_URL = "https://github.com/zbatch/zbatch"
DOCS_URL = f"{REPOSITORY_URL}/blob/main/docs"


def doc_url(page: str) -> str:
    """The address of the documentation page `page` (e.g. "operations")."""
    return f"{DOCS_URL}/{page}.md"


# Every environment variable zbatch reads, with what it does (the top-level help and
# docs/cli.md list them; tests/test_cli_conventions.py checks the code reads each).
ENVIRONMENT: tuple[tuple[str, str], ...] = (
    (
        "CIVITAI_API_TOKEN",
        "your Civitai API key (run, retry, cancel, verify --repair, plan --whatif)",
    ),
    (
        "CIVITAI_API_BASE_URL",
        "the orchestration API's address (default: Civitai's); --api-url wins",
    ),
    (
        "ZBATCH_STORE",
        "a postgresql:// URL: the batch's record is in that database, not OUT/batch.sqlite"
        " (every command that opens a batch; --store wins); its password is never shown",
    ),
    ("HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY", "proxies for the API (never for loopback)"),
    ("SSL_CERT_FILE", "the certificates that verify the API's TLS"),
    ("NO_COLOR", "any non-empty value: no colors (like --color never)"),
    (
        "PYTHONIOENCODING",
        "the output's encoding; what it cannot encode prints as a stand-in ('-' for '·') or '?'",
    ),
)


def environment_help() -> str:
    """The `Environment variables:` block of the top-level help."""
    lines = ["Environment variables:"]
    for name, what in ENVIRONMENT:
        lines += [f"  {name}", f"       {what}"]
    return "\n".join(lines)


def top_epilog(exit_codes: str) -> str:
    """The top-level help's epilog: where to start, the environment, exit codes, docs."""
    return "\n\n".join(
        (
            "Start with `zbatch init` (a demo manifest, its prompts and fault profiles), then\n"
            "`zbatch plan demo.yaml` and `zbatch run demo.yaml --emulator`.",
            environment_help(),
            exit_codes + "\n(each command's --help lists the codes it can end with)",
            f"Documentation: {REPOSITORY_URL}#readme and {DOCS_URL}/cli.md",
        )
    )


# What a character the output's encoding lacks is printed as; anything else prints as "?".
ASCII_STANDINS = {
    "·": "-",
    "—": "-",
    "–": "-",
    "…": "...",
    "→": "->",
    "×": "x",
    "≤": "<=",
    "≥": ">=",
}


def _stand_in(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start : error.end]
    return "".join(ASCII_STANDINS.get(c, "?") for c in text), error.end


codecs.register_error("zbatch-standin", _stand_in)


def safe_streams(streams: tuple[IO[str], ...] = ()) -> None:
    """Make stdout and stderr print what their encoding can't encode as stand-ins.

    Under `PYTHONIOENCODING=ascii` or `LANG=C`, the `·` separator and any prompt's own
    characters would end a command with UnicodeEncodeError; instead `·` prints as `-`
    (`ASCII_STANDINS`), anything else the encoding lacks as `?`.
    """
    for stream in streams or (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is None:
            continue
        try:
            "".join(ASCII_STANDINS).encode(getattr(stream, "encoding", None) or "ascii")
        except (UnicodeEncodeError, LookupError):
            reconfigure(errors="zbatch-standin")


def rich_console(*, stderr: bool = False) -> Console:
    """A rich Console on stdout (or stderr) that obeys --color and NO_COLOR.

    Without color it writes no style at all (`color_system=None`: no bold either, where
    rich's `no_color` keeps it); on a terminal a live display still moves the cursor.
    """
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if color_mode() == "always":
        return Console(stderr=stderr, force_terminal=True)
    if not color_for(stream):
        return Console(stderr=stderr, color_system=None)
    return Console(stderr=stderr)


def _plain(value: object) -> object:
    """`json.dumps`'s fallback for what a command's result holds beyond JSON's types."""
    import dataclasses
    import enum
    from pathlib import PurePath

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def result_json(result: object, **extra: object) -> str:
    """A command's result (a dataclass) as one JSON document, `extra` keys added:
    what `--json` prints on stdout (logs stay on stderr)."""
    import dataclasses
    import json

    assert dataclasses.is_dataclass(result)
    assert not isinstance(result, type)
    document = json.loads(json.dumps(dataclasses.asdict(result), default=_plain))
    document.update(json.loads(json.dumps(extra, default=_plain)))
    return json.dumps(document, indent=2)
