"""The one exception hierarchy of zbatch, and the exit code each error ends a run with.

```
* ZbatchError                     exit 1   anything we raise on purpose
  + ManifestError                 exit 2   file:line, field, value, what is allowed
    - InvalidManifest                      every problem of one manifest, one per line
  + ApiError                      exit 1   the orchestration API said no, or did not answer
    - RetryableError                       transport errors, 408, 429, 5xx, a cut or non-JSON
                                           2xx body (retry_after_s)
    - RejectedError                        400: the input is wrong; nothing spent, never retried
    - NotFoundError                        404: unknown or deleted workflow / blob
    - UrlExpiredError                      401/403 on a signed blob URL: refresh it, then retry
    - UnusableAnswerError                  a 2xx that is not JSON, the wrong shape, too big
    - AuthError                   exit 3   401/403: the run stops, nothing is lost
    - FundsError                  exit 3   402, or a 400/403 naming insufficient Buzz: stops
    - ServiceUnreachable          exit 2   before the service ever answered: refused, no such
                                           host, TLS failure; names the URL, nothing spent
    - ServiceOutage               exit 130 answered, then unreachable for --give-up-after:
                                           the run stops, resumable (the same command)
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
    - TargetError                          an object store refused a PUT, or kept other bytes
  + UsageError                    exit 2   a flag, environment variable or folder is wrong
    - OutFolderError                       `zbatch run`'s output folder is unsafe or unwritable
    - NotABatch                            the folder holds no zbatch batch
    - ManifestChanged                      the manifest leaves cells of the batch behind
                                           (or renames it): `--replace` or `--keep`
    - GalleryError                         an axis or state the batch does not have
    - ExportError                          a format, state or target that is not allowed
  + MissingExtra                  exit 1   an optional dependency (`zbatch[parquet]`) is missing
```

Exits that are not errors (a finished command's verdict) are named in `ExitCode` with the
errors' codes; `EXIT_CODES` says what each means, and every command's `--help` lists its
codes from it (tests/test_cli.py checks that each code a command returns is listed).

Exceptions that never leave their module (a prompt template's, a text file's, a schema
view's, an image check's) are caught and translated where they are raised, into one of
these; they are private to that module.

The local machine's failures (exit 6 and 7) are translated from `OSError` and
`sqlite3.Error` in one place, `runner/local_faults.py`; each leaves a record the same
command continues from once the cause is fixed (docs/reliability.md, "The local machine").

A message says what is wrong, where, and what is allowed. No message, str() or repr() of any
of these ever holds the API token: `api.py` builds them from the method, a redacted URL, the
status and the service's own problem text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any, ClassVar


class ZbatchError(Exception):
    """Base of every error zbatch raises on purpose."""

    exit_code: ClassVar[int] = 1


class ManifestError(ZbatchError):
    """The manifest (or a file it names) is wrong; nothing was written or spent."""

    exit_code: ClassVar[int] = 2


class InvalidManifest(ManifestError):
    """The manifest has problems; the message lists each, one per line."""

    def __init__(self, problems: Sequence[Any]) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        # runner.manifest's `Problem` values (this module sits below the manifest package)
        self.problems: tuple[Any, ...] = tuple(problems)


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


class UnusableAnswerError(RetryableError):
    """An answer that cannot be used: a 2xx that is not JSON, the wrong shape, over the size
    limit, or a redirect where none is expected. Retried like a 5xx; `Client` stops after
    `max_unusable_answers` in a row for the same request (docs/reliability.md)."""


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


class ServiceUnreachable(ApiError):
    """The service could not be reached before it ever answered (connection refused, no such
    host, TLS failure, no connection in time). Exit 2: the cause is the URL (`--api-url`,
    `$CIVITAI_API_BASE_URL`), a proxy, certificates or the network, as with a wrong flag or
    variable; nothing was submitted or spent, so there is nothing to resume."""

    exit_code: ClassVar[int] = 2


class ServiceOutage(ApiError):
    """The service answered, then could not be reached (or failed every call) for longer
    than `--give-up-after`. Exit 130, the table's "run the same command again to resume":
    the record is whole, intents are resubmitted with their externalId, nothing twice.
    `outcome` is the run's (`runner.ops`'s `RunOutcome`), for the summary, when a run raised it.
    """

    exit_code: ClassVar[int] = 130

    def __init__(self, message: str, *, outcome: Any = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.outcome: Any = outcome


class CapReached(ZbatchError):
    """Submitting more would spend beyond the batch's Buzz cap. The batch stays resumable.

    `outcome` is how the run ended (`runner.ops`'s `RunOutcome`, for the summary), when a
    run raised it; this module sits below ops, hence `Any`.
    """

    exit_code: ClassVar[int] = 4

    def __init__(self, message: str, *, outcome: Any = None) -> None:
        super().__init__(message)
        self.outcome: Any = outcome


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


class TargetError(LocalDiskError):
    """Where the files go (an object store named by `out: s3://...`) refused a file or kept
    other bytes than those sent: the file is not counted. Names the object, never a
    credential."""


class UsageError(ZbatchError):
    """A flag, an environment variable or a folder is wrong; nothing was written or spent."""

    exit_code: ClassVar[int] = 2


class OutFolderError(UsageError):
    """The output folder cannot be used as it is: writable by others, or not by us."""

    exit_code: ClassVar[int] = 2


class NotABatch(UsageError):
    """The folder given to a command holds no zbatch batch."""


class ManifestChanged(UsageError):
    """`zbatch run` on a manifest that leaves cells of the batch in its `out` behind, or names
    it otherwise, without `--replace` or `--keep`: nothing was written or spent."""


class GalleryError(UsageError):
    """`zbatch gallery` was asked for what the batch cannot show: an axis it lacks, a state."""


class ExportError(UsageError):
    """The export cannot be made as asked (a format, state or size that is not allowed)."""


class MissingExtra(ZbatchError):
    """An optional dependency the chosen format needs is not installed."""


class ExitCode(IntEnum):
    """Every exit code of `zbatch`; the errors above carry theirs as `exit_code`."""

    OK = 0
    ERROR = 1  # an unexpected error, an API refusal the run cannot go on from
    USAGE = 2  # ManifestError, UsageError and its kinds
    AUTH_OR_FUNDS = 3  # AuthError, FundsError; and `zbatch plan` over budget
    CAP_REACHED = 4  # CapReached
    DAMAGED = 5  # `zbatch verify`: damaged images found (or left)
    DISK = 6  # LocalDiskError
    BATCH_UNUSABLE = 7  # BatchUnusable
    FENCED = 8  # store.Fenced / LeaseLost: a worker declared dead, its work taken over
    INTERRUPTED = 130  # Ctrl-C or SIGTERM: stopped cleanly, resumable
    BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away


EXIT_CODES: Mapping[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.ERROR: "unexpected error, or the API refused in a way the run cannot go on from",
    ExitCode.USAGE: "invalid manifest, flag, environment variable or folder; nothing spent",
    ExitCode.AUTH_OR_FUNDS: "the token was refused, or the account cannot pay",
    ExitCode.CAP_REACHED: "the Buzz cap stopped the batch; raise it and run again to resume",
    ExitCode.DAMAGED: "damaged images found",
    ExitCode.DISK: "the disk refused a write (full, read-only, I/O error); fix, run again",
    ExitCode.FENCED: "this worker was declared dead (its lease ran out) and its attempts"
    " taken over by another worker: it stopped; start it again to rejoin",
    ExitCode.BATCH_UNUSABLE: "batch.sqlite is in use, locked, damaged or from a newer zbatch",
    ExitCode.INTERRUPTED: "interrupted; run the same command again to resume",
    ExitCode.BROKEN_PIPE: "the reader of the output went away",
}
