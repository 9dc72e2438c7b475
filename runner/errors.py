"""The one exception hierarchy of zbatch, and the exit code each error ends a run with.

```
* ZbatchError                     exit 1   anything we raise on purpose
  + ManifestError                 exit 2   file:line, field, value, what is allowed
  + ApiError                      exit 1   the orchestration API said no, or did not answer
    - RetryableError                       transport errors, 408, 429, 5xx, a cut or non-JSON
                                           2xx body (retry_after_s)
    - RejectedError                        400: the input is wrong; nothing spent, never retried
    - NotFoundError                        404: unknown or deleted workflow / blob
    - UrlExpiredError                      401/403 on a signed blob URL: refresh it, then retry
    - AuthError                   exit 3   401/403: the run stops, nothing is lost
    - FundsError                  exit 3   402, or a 400/403 naming insufficient Buzz: stops
  + CapReached                    exit 4   the Buzz cap would be exceeded: stops, resumable
  + StoreError                    exit 1   an illegal state transition
    - BatchUnusable               exit 7   OUT/batch.sqlite cannot be used as it is now
      . BatchInUse                         another zbatch holds the batch lock
      . DatabaseLocked                     another program holds SQLite's lock past busy_timeout
      . DatabaseDamaged                    not a database, truncated or malformed: `--adopt`
      . NewerSchema                        written by a newer zbatch: upgrade zbatch
  + LocalDiskError                exit 6   the disk refused a write (or a read): an I/O error
    - DiskFull                             ENOSPC, EDQUOT, SQLITE_FULL: free space, run again
    - ReadOnlyDisk                         EROFS, SQLITE_READONLY: remount, or another out
  + UsageError                    exit 2   a flag, environment variable or folder is wrong
    - OutFolderError                       `zbatch run`'s output folder is unsafe or unwritable
```

The local machine's failures (exit 6 and 7) are translated from `OSError` and
`sqlite3.Error` in one place, `runner/local_faults.py`; each leaves a record the same
command continues from once the cause is fixed (docs/reliability.md, "The local machine").

A message says what is wrong, where, and what is allowed. No message, str() or repr() of any
of these ever holds the API token: `api.py` builds them from the method, a redacted URL, the
status and the service's own problem text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class ZbatchError(Exception):
    """Base of every error zbatch raises on purpose."""

    exit_code: ClassVar[int] = 1


class ManifestError(ZbatchError):
    """The manifest (or a file it names) is wrong; nothing was written or spent."""

    exit_code: ClassVar[int] = 2


class ApiError(ZbatchError):
    """The orchestration API refused a request or could not be reached.

    `status` is the HTTP status (None for a transport failure), `method` and `url` name the
    request (the URL with signatures and tokens redacted), `detail` is the service's text.
    """

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str = "",
        url: str = "",
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.url = url
        self.detail = detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, status={self.status!r})"


class RetryableError(ApiError):
    """A transient failure: transport error, 408, 429, 5xx, a cut or non-JSON 2xx. Retry it.

    `retry_after_s` is the service's Retry-After in seconds when it sent one.
    """

    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s


class RejectedError(ApiError):
    """400: the service refused the input. Nothing was spent; the same input never succeeds.

    `errors` maps the service's field paths (e.g. `steps[0].input.width`) to its messages.
    """

    def __init__(
        self, message: str, *, errors: Mapping[str, list[str]] | None = None, **kw: object
    ) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.errors: dict[str, list[str]] = dict(errors or {})


class NotFoundError(ApiError):
    """404: the workflow or blob is unknown to this token, deleted, or past retention."""


class UrlExpiredError(ApiError):
    """401/403 from a signed blob URL: the signature expired. Refresh the blob, then fetch again.

    Not an `AuthError`: the API token is fine (it is never sent to blob URLs); only the URL is
    stale. Retrying the same URL never helps, so `retryable` is False.
    """


class AuthError(ApiError):
    """401/403: the token is missing, invalid, or not allowed to do this. The run stops."""

    exit_code: ClassVar[int] = 3


class FundsError(ApiError):
    """The account cannot pay for the work (402, or a 400/403 naming insufficient Buzz)."""

    exit_code: ClassVar[int] = 3


class CapReached(ZbatchError):
    """Submitting more would spend beyond the batch's Buzz cap. The batch stays resumable."""

    exit_code: ClassVar[int] = 4


class StoreError(ZbatchError):
    """The database refused a transition (wrong state), or cannot be used (`BatchUnusable`)."""


class BatchUnusable(StoreError):
    """OUT/batch.sqlite cannot be used as it is now; nothing in it was changed."""

    exit_code: ClassVar[int] = 7


class BatchInUse(BatchUnusable):
    """Another zbatch (run, retry, cancel, verify --repair) holds the batch's lock."""


class DatabaseLocked(BatchUnusable):
    """Another program held SQLite's lock on the database for longer than busy_timeout."""


class DatabaseDamaged(BatchUnusable):
    """The file is not a SQLite database, is truncated, or its pages are malformed.

    `detail` is what was found (SQLite's message, or what the header says).
    """

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class NewerSchema(BatchUnusable):
    """The database was written by a newer zbatch: its schema is past what this one knows."""


class LocalDiskError(ZbatchError):
    """The disk refused a write (or a read) of the batch's folder; the record stays whole."""

    exit_code: ClassVar[int] = 6


class DiskFull(LocalDiskError):
    """No space left (ENOSPC, EDQUOT, SQLITE_FULL): free some, then run the command again."""


class ReadOnlyDisk(LocalDiskError):
    """The folder is on a read-only filesystem (EROFS, SQLITE_READONLY)."""


class UsageError(ZbatchError):
    """A flag, an environment variable or a folder is wrong; nothing was written or spent."""

    exit_code: ClassVar[int] = 2


class OutFolderError(UsageError):
    """The output folder cannot be used as it is: writable by others, or not by us."""

    exit_code: ClassVar[int] = 2
