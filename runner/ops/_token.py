"""Whether a command has what the service asks for, and the error when it has not.

`zbatch retry`, `cancel` and `verify --repair` need the service only for some batches: a
retry that chooses no cell, a cancel with no workflow in flight, a verify that finds every
image intact need none. Without a token (and without `--emulator`) they do what they can
offline and say so; only when the service is needed is the missing token an error (exit 3),
naming `--emulator` for a batch made on the embedded emulator.
"""

from __future__ import annotations

import os

from runner.errors import AuthError
from runner.log import TOKEN_ENV
from runner.ops._run import Target


def has_token(target: Target) -> bool:
    """Whether calls to `target` carry a token: its own (the emulator's) or the environment's."""
    return target.token is not None or bool(os.environ.get(TOKEN_ENV, "").strip())


def no_token(command: str, why: str) -> AuthError:
    """The error of `command`, which needs the service (for `why`) and has no token."""
    return AuthError(
        f"no API token: {command} needs the service ({why}). Set {TOKEN_ENV} to your Civitai"
        " API key, or add --emulator for a batch made with `zbatch run --emulator`"
    )
