"""Blob URLs and bytes: ids, HMAC-signed expiring URLs, content tokens and the image cache."""

from __future__ import annotations

import base64
import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio.to_thread

from runner.emulator.faults import derive_bytes
from runner.emulator.problems import Problem

BLOB_PREFIX = "/v2/consumer/blobs/"
CONTENT_PREFIX = "/v2/consumer/blobs/content/"


def new_blob_id(seed: int, workflow_id: str, index: int, extension: str) -> str:
    """An opaque blob id like `E8S6FBPH50ENNVF2PD5XRBPXB0.jpeg` (base32 plus extension)."""
    raw = base64.b32encode(derive_bytes(seed, "blob", workflow_id, index)[:16]).decode("ascii")
    return raw.rstrip("=") + "." + extension.lstrip(".")


@dataclass(frozen=True)
class SignedUrl:
    """A URL and the unix second it stops working."""

    url: str
    expires_unix_s: int


class BlobSigner:
    """Signs and checks blob URLs and content tokens with a secret derived from the seed."""

    def __init__(self, seed: int) -> None:
        self._secret = derive_bytes(seed, "blob-url-secret")

    def _mac(self, message: str) -> str:
        digest = hmac.new(self._secret, message.encode("utf-8"), "sha256").digest()
        return base64.urlsafe_b64encode(digest[:18]).decode("ascii")

    def blob_url(self, base_url: str, blob_id: str, expires_unix_s: int) -> SignedUrl:
        """`{base}/v2/consumer/blobs/{id}?exp=<unix>&sig=<hmac>`, usable without auth."""
        sig = self._mac(f"blob:{blob_id}:{expires_unix_s}")
        url = f"{base_url.rstrip('/')}{BLOB_PREFIX}{blob_id}?exp={expires_unix_s}&sig={sig}"
        return SignedUrl(url, expires_unix_s)

    def check_blob_url(self, blob_id: str, exp: str, sig: str, now_unix_s: float) -> None:
        """Raise a 403 Problem unless `sig` signs (`blob_id`, `exp`) and `exp` is in the future."""
        try:
            expires_unix_s = int(exp)
        except ValueError:
            raise Problem(403, "The blob URL is malformed: exp is not a unix time.") from None
        if not hmac.compare_digest(self._mac(f"blob:{blob_id}:{expires_unix_s}"), sig):
            raise Problem(403, "The blob URL signature is invalid.")
        if expires_unix_s <= now_unix_s:
            raise Problem(403, "The blob URL has expired; refresh it or re-read the workflow.")

    def content_url(self, base_url: str, blob_id: str, expires_unix_s: int) -> str:
        """`{base}/v2/consumer/blobs/content/{token}`: the token names the blob and its expiry."""
        payload = f"{blob_id}:{expires_unix_s}"
        body = base64.urlsafe_b64encode(payload.encode("utf-8")).decode("ascii").rstrip("=")
        token = f"{body}.{self._mac('content:' + payload)}"
        return f"{base_url.rstrip('/')}{CONTENT_PREFIX}{token}"

    def check_content_token(self, token: str, now_unix_s: float) -> str:
        """The blob id inside a valid, unexpired content token; 400 or 401 Problem otherwise."""
        body, _, sig = token.partition(".")
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")
            blob_id, _, exp = payload.rpartition(":")
            expires_unix_s = int(exp)
        except (ValueError, UnicodeDecodeError):
            raise Problem(400, "The content token is malformed.") from None
        if not hmac.compare_digest(self._mac("content:" + payload), sig):
            raise Problem(401, "The content token signature is invalid.")
        if expires_unix_s <= now_unix_s:
            raise Problem(401, "The content token has expired; follow a fresh blob URL.")
        return blob_id


class ImageCache:
    """A bounded LRU of rendered images; renders run in a worker thread, off the event loop."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max(1, max_entries)
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self.renders = 0

    async def get(self, key: str, render: Callable[[], bytes]) -> bytes:
        """The cached bytes for `key`, rendering them with `render()` on a miss."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        data = await anyio.to_thread.run_sync(render)
        self.renders += 1
        self._entries[key] = data
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return data
