"""Where a batch's files go: a local folder, or an object store named by an fsspec URL.

Issue 18 lets `out:` be `s3://bucket/prefix` (or `gs://`, `az://`, `file://`). A `Target`
is the one place that knows how to put a file there so that it is whole or absent:

- `LocalTarget`: today's rule, a temp file, fsync, rename, the folder fsynced
  (`atomic_write_bytes`).
- `StoreTarget`: one complete PUT through fsspec (an object store has no rename, and needs
  none: an object appears whole when its upload completes, a multipart one included). The
  bytes are checked after the PUT: the object's size, and its MD5 where the store reports
  one as a single-part ETag; otherwise the object is read back and its sha256 compared. An
  object that does not match is deleted and the PUT fails (`TargetError`).

Paths inside a target are relative POSIX paths that zbatch made (never one the API
returned); `..`, absolute paths and empty parts are refused.

Credentials come from where each filesystem looks for them (environment, profile,
instance metadata), never from the URL: a URL with a user or password in it is refused, and
no error raised here contains more of the URL than its scheme, bucket and path
(`display`). fsspec and the scheme's package (s3fs, gcsfs, adlfs) are optional: naming a
URL without them installed says which package to install.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlsplit

from runner.disk._atomic import atomic_write_bytes
from runner.errors import MissingExtra, TargetError, UsageError

# The scheme's fsspec package. (Extras of zbatch's own come when a run can use a URL out.)
_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
_PLAIN_MD5 = re.compile(r'^"?([0-9a-f]{32})"?$')


class Target(Protocol):
    def put(self, relative: str, data: bytes, sha256: str) -> None: ...
    def get(self, relative: str) -> bytes: ...
    def exists(self, relative: str) -> bool: ...
    def display(self, relative: str = "") -> str: ...


def relative_key(relative: str) -> str:
    """`relative` checked as a path zbatch made: relative, no `..`, no empty part."""
    path = PurePosixPath(relative)
    if not relative or path.is_absolute() or any(p in ("..", ".", "") for p in relative.split("/")):
        raise ValueError(f"not a relative path inside the target: {relative!r}")
    return str(path)


def is_url(out: str) -> bool:
    """True when `out` names a target by URL (`scheme://...`) rather than a local path."""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", out))


def open_target(out: str | Path, **storage_options: Any) -> Target:
    """The target `out` names: a local folder (a path or `file://`) or an object store."""
    if isinstance(out, Path) or not is_url(out):
        return LocalTarget(Path(out))
    parts = urlsplit(out)
    if parts.username or parts.password:
        raise UsageError(
            f"out: {parts.scheme}://{parts.hostname}{parts.path}: the URL holds credentials; "
            "give them where the storage's own tools look (environment variables, a profile), "
            "never in the manifest or on the command line"
        )
    if parts.scheme == "file":
        return LocalTarget(Path(parts.path))
    return StoreTarget.open(out, **storage_options)


@dataclass(frozen=True)
class LocalTarget:
    root: Path

    def put(self, relative: str, data: bytes, sha256: str) -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise TargetError(f"{self.display(relative)}: the bytes are not those hashed")
        path = self.root / relative_key(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)

    def get(self, relative: str) -> bytes:
        return (self.root / relative_key(relative)).read_bytes()

    def exists(self, relative: str) -> bool:
        return (self.root / relative_key(relative)).is_file()

    def display(self, relative: str = "") -> str:
        return str(self.root / relative) if relative else str(self.root)


@dataclass
class StoreTarget:
    """An object store through fsspec: `fs` is the filesystem, `base` the bucket/prefix."""

    fs: Any
    scheme: str
    base: str
    _root: str = field(default="", repr=False)

    @classmethod
    def open(cls, url: str, **storage_options: Any) -> StoreTarget:
        scheme = urlsplit(url).scheme
        package = _PACKAGES.get(scheme, scheme + "fs")
        try:
            import fsspec

            fs, base = fsspec.core.url_to_fs(url, **storage_options)
        except ImportError as exc:
            raise MissingExtra(
                f"out: {scheme}:// needs fsspec and {package}: pip install fsspec {package}"
            ) from exc
        except ValueError as exc:  # fsspec knows no such protocol
            raise UsageError(f"out: {scheme}:// is not a storage fsspec knows: {exc}") from None
        return cls(fs, scheme, str(base).rstrip("/"))

    def _key(self, relative: str) -> str:
        return f"{self.base}/{relative_key(relative)}"

    def display(self, relative: str = "") -> str:
        key = self._key(relative) if relative else self.base
        return f"{self.scheme}://{key}"

    def put(self, relative: str, data: bytes, sha256: str) -> None:
        """One complete PUT of `data`, then checked; a mismatch is deleted and raised."""
        if hashlib.sha256(data).hexdigest() != sha256:
            raise TargetError(f"{self.display(relative)}: the bytes are not those hashed")
        key = self._key(relative)
        try:
            self.fs.pipe_file(key, data)
            problem = self._check(key, data, sha256)
        except (OSError, ValueError) as exc:  # botocore's errors arrive as OSError from s3fs
            raise TargetError(f"{self.display(relative)}: {_reason(exc)}") from None
        if problem:
            try:
                self.fs.rm_file(key)
                after = "the object was removed"
            except (OSError, ValueError):
                after = "removing the object failed too"
            raise TargetError(f"{self.display(relative)}: {problem}; {after}")

    def _check(self, key: str, data: bytes, sha256: str) -> str | None:
        info = self.fs.info(key)
        if int(info.get("size", -1)) != len(data):
            return f"stored {info.get('size')} bytes, sent {len(data)}"
        etag = _PLAIN_MD5.match(str(info.get("ETag", info.get("etag", ""))))
        if etag:  # a single-part upload's ETag is the MD5 of what the store keeps
            ok = etag.group(1) == hashlib.md5(data, usedforsecurity=False).hexdigest()
        else:
            ok = hashlib.sha256(self.fs.cat_file(key)).hexdigest() == sha256
        return None if ok else "the stored bytes differ from those sent"

    def get(self, relative: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._key(relative)))
        except (OSError, ValueError) as exc:
            raise TargetError(f"{self.display(relative)}: {_reason(exc)}") from None

    def exists(self, relative: str) -> bool:
        return bool(self.fs.exists(self._key(relative)))


_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|CREDENTIAL|_KEY", re.IGNORECASE)


def _reason(exc: BaseException) -> str:
    """An error's kind and first line, with the value of every secret-looking environment
    variable blanked (storage libraries name operations and buckets, but a message that
    quotes a request could hold a key)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "***")
    return f"{type(exc).__name__}: {text}"[:300]
