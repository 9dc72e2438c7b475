"""Where a batch's files go (runner/disk/_target.py): whole or absent, checked, no secrets.

The object store is moto's S3 server on loopback, reached by s3fs as a user's would: the
endpoint and the credentials from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.disk import LocalTarget, StoreTarget, open_target
from runner.disk._target import relative_key
from runner.errors import MissingExtra, TargetError, UsageError
from tests.services import S3_TEST_ENV, MotoS3

DATA = b"\xff\xd8" + bytes(range(256)) * 40 + b"\xff\xd9"
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def bucket(s3_server: MotoS3, monkeypatch: pytest.MonkeyPatch, request: Any) -> Iterator[str]:
    """A fresh bucket, the environment set as a user's would be for it."""
    for name, value in S3_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    fs: Any = s3_server.filesystem()
    name = "zb-" + request.node.name.replace("_", "-")[:40].lower()
    fs.mkdir(name)
    yield name
    fs.rm(name, recursive=True)


def _target(bucket: str) -> StoreTarget:
    target = open_target(f"s3://{bucket}/night1", skip_instance_cache=True)
    assert isinstance(target, StoreTarget)
    return target


def test_a_put_is_one_whole_object_read_back_by_its_key(bucket: str, s3_server: MotoS3) -> None:
    target = _target(bucket)
    target.put("images/ab/cell-0.jpg", DATA, SHA)
    assert target.exists("images/ab/cell-0.jpg")
    assert target.get("images/ab/cell-0.jpg") == DATA
    fs: Any = s3_server.filesystem()
    assert fs.cat_file(f"{bucket}/night1/images/ab/cell-0.jpg") == DATA  # where a reader looks
    assert target.display("images/ab/cell-0.jpg") == f"s3://{bucket}/night1/images/ab/cell-0.jpg"
    target.put("images/ab/cell-0.jpg", DATA[:100], hashlib.sha256(DATA[:100]).hexdigest())
    assert target.get("images/ab/cell-0.jpg") == DATA[:100]  # replaced whole


def test_bytes_that_are_not_those_hashed_are_never_put(bucket: str, tmp_path: Path) -> None:
    for target in (_target(bucket), LocalTarget(tmp_path)):
        with pytest.raises(TargetError, match="not those hashed"):
            target.put("a.jpg", DATA, "0" * 64)
        assert not target.exists("a.jpg")


class _Lossy:
    """A filesystem whose store keeps the bytes sent minus the last one (a torn upload)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def pipe_file(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(key, data[:-1] + b"\x00")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)


class _NoEtag(_Lossy):
    """A store that reports no MD5 (a multipart upload's ETag, gcs, azure): read back."""

    def info(self, key: str) -> dict[str, Any]:
        return {k: v for k, v in self.fs.info(key).items() if k.lower() != "etag"}


@pytest.mark.parametrize("store", [_Lossy, _NoEtag])
def test_an_object_the_store_kept_wrong_is_removed_and_the_put_fails(
    bucket: str, store: type[_Lossy]
) -> None:
    target = _target(bucket)
    target.fs = store(target.fs)
    with pytest.raises(TargetError, match="differ from those sent; the object was removed"):
        target.put("images/x.jpg", DATA, SHA)
    assert not target.exists("images/x.jpg")
    target.fs = target.fs.fs  # the store keeps what it is sent again
    target.put("images/x.jpg", DATA, SHA)
    assert target.get("images/x.jpg") == DATA


def test_errors_name_the_object_never_a_credential(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = open_target("s3://no-such-bucket-here/p", skip_instance_cache=True)
    with pytest.raises(TargetError) as caught:
        target.put("a.jpg", DATA, SHA)
    text = str(caught.value)
    assert text.startswith("s3://no-such-bucket-here/p/a.jpg: ")
    assert S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"] not in text
    assert S3_TEST_ENV["AWS_ACCESS_KEY_ID"] not in text


def test_a_url_with_credentials_is_refused_without_repeating_them() -> None:
    with pytest.raises(UsageError, match="holds credentials") as caught:
        open_target("s3://AKIAXXXX:s3cr3t-value@bucket/prefix")
    assert "s3cr3t-value" not in str(caught.value)
    assert "AKIAXXXX" not in str(caught.value)


def test_local_paths_and_file_urls_are_folders(tmp_path: Path) -> None:
    for out in (str(tmp_path / "a"), tmp_path / "b", f"file://{tmp_path}/c"):
        target = open_target(out)
        assert isinstance(target, LocalTarget)
        target.put("images/0.jpg", DATA, SHA)
        assert target.get("images/0.jpg") == DATA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    assert not list(tmp_path.rglob("*.tmp*"))  # no temp file left beside them


def test_a_scheme_whose_package_is_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    def missing(url: str, **_: Any) -> Any:
        raise ImportError("Install gcsfs to access Google Storage")

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    with pytest.raises(
        MissingExtra, match="gs:// needs fsspec and gcsfs: pip install fsspec gcsfs"
    ):
        open_target("gs://bucket/x")


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../up", "a/../../b", "a//b", "./a"])
def test_only_relative_paths_zbatch_made_are_keys(bad: str) -> None:
    with pytest.raises(ValueError, match="not a relative path"):
        relative_key(bad)
