"""Blob delivery: signed-URL redirects, refresh, and image bytes with their faults."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from runner.emulator import hostile
from runner.emulator.clock import iso_utc
from runner.emulator.images import content_type, render_image
from runner.emulator.problems import Problem
from runner.emulator.validation import output_format
from runner.emulator.workflows import WorkflowRecord

if TYPE_CHECKING:
    from runner.emulator.service import Emulator


@dataclass(frozen=True)
class Content:
    """Image bytes to send and their media type; `declared_length` is a lying Content-Length
    to send instead of the true one (the `blob_lying_length` fault), None for the truth."""

    data: bytes
    media_type: str
    declared_length: int | None = None


def _available(emulator: Emulator, record: WorkflowRecord, index: int, blob_id: str) -> None:
    if record.job_status(index, emulator.clock.now()) != "succeeded":
        raise Problem(404, f"Blob {blob_id!r} is not available (yet).")


def _content_location(emulator: Emulator, base_url: str, blob_id: str) -> str:
    expires_unix_s = int(emulator.now_unix_s() + emulator.config.content_ttl_s)
    return emulator.signer.content_url(base_url, blob_id, expires_unix_s)


def redirect_signed(emulator: Emulator, blob_id: str, exp: str, sig: str, base_url: str) -> str:
    """A signed blob URL (no auth): the content URL to redirect to, or 403 / 404."""
    emulator.settle()
    emulator.signer.check_blob_url(blob_id, exp, sig, emulator.now_unix_s())
    record, index = emulator.blob(blob_id)
    _available(emulator, record, index, blob_id)
    return _content_location(emulator, base_url, blob_id)


def redirect_owned(emulator: Emulator, account: str, blob_id: str, base_url: str) -> str:
    """GetBlob with a bearer token: the content URL for the account's own available blob."""
    emulator.settle()
    record, index = emulator.blob(blob_id)
    if record.account != account:
        raise Problem(404, f"Blob {blob_id!r} was not found.")
    _available(emulator, record, index, blob_id)
    return _content_location(emulator, base_url, blob_id)


def refresh(emulator: Emulator, account: str, blob_id: str, base_url: str) -> dict[str, Any]:
    """RefreshBlob: the Blob with a freshly signed `url` and `urlExpiresAt`."""
    emulator.settle()
    record, index = emulator.blob(blob_id)
    if record.account != account:
        raise Problem(404, f"Blob {blob_id!r} was not found.")
    image = emulator.render_for(record, base_url)["steps"][0]["output"]["images"][index]
    signed = emulator.sign(base_url, blob_id)
    image.update(url=signed.url, urlExpiresAt=iso_utc(signed.expires_unix_s))
    return dict(image)


async def serve_content(emulator: Emulator, token: str) -> Content:
    """The bytes behind a content token, after the blob faults (5xx, truncate, corrupt, and
    the hostile ones: not an image, a bomb, the wrong size, a lying length)."""
    emulator.settle()
    blob_id = emulator.signer.check_content_token(token, emulator.now_unix_s())
    record, index = emulator.blob(blob_id)
    _available(emulator, record, index, blob_id)
    if emulator.faults.fires("blob_5xx", blob_id):
        raise Problem(emulator.faults.status_for("blob_5xx", blob_id), "Blob store failed (fault).")
    inp = record.input
    fmt = output_format(inp)

    def draw() -> bytes:
        return render_image(
            prompt=str(inp["prompt"]),
            seed=int(inp["seed"]) + index,
            index=index,
            width=int(inp["width"]),
            height=int(inp["height"]),
            fmt=fmt,
            salt=image_salt(inp),
            metadata=inp.get("imageMetadata"),
        )

    faults, media_type = emulator.faults, content_type(fmt)
    if faults.fires("blob_not_image", blob_id):
        return Content(hostile.NOT_AN_IMAGE, media_type)  # an error page sold as an image
    if faults.fires("blob_bomb", blob_id):
        return Content(await anyio.to_thread.run_sync(hostile.bomb_png), "image/png")
    if faults.fires("blob_wrong_size", blob_id):
        wrong = functools.partial(hostile.wrong_size_image, inp, index, fmt, image_salt(inp))
        return Content(await anyio.to_thread.run_sync(wrong), media_type)
    data = await emulator.images.get(render_key(inp, index, fmt), draw)
    if faults.fires("blob_truncate", blob_id):
        data = data[: int(len(data) * emulator.config.faults.blob_truncate.fraction)]
    elif faults.fires("blob_corrupt", blob_id):
        data = corrupt(data)
    elif faults.fires("blob_lying_length", blob_id):
        declared = hostile.lying_length(emulator.config.seed, blob_id, len(data))
        return Content(data, media_type, declared_length=declared)
    return Content(data, media_type)


def render_key(inp: Mapping[str, Any], index: int, fmt: str) -> str:
    """The cache key of an image: a hash of everything `render_image` draws it from. Two
    workflows asking the same (a retry, a second runner over the same grid) share one
    render, so a bench at 1024² measures the runner, not the emulator's encoder."""
    parts = (
        str(inp["prompt"]), int(inp["seed"]) + index, index, int(inp["width"]),
        int(inp["height"]), fmt, image_salt(inp), inp.get("imageMetadata"),
    )  # fmt: skip
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def corrupt(data: bytes) -> bytes:
    """Flip every bit of a run of bytes in the middle (length kept, content wrong)."""
    if not data:
        return data
    middle = len(data) // 2
    start, end = max(0, middle - 32), min(len(data), middle + 32)
    return data[:start] + bytes(b ^ 0xFF for b in data[start:end]) + data[end:]


# Inputs that are arguments of their own, or (imageMetadata) stored in the file, not drawn.
_OWN_ARGUMENTS = frozenset(
    {"prompt", "seed", "width", "height", "outputFormat", "quantity", "imageMetadata"}
)


def image_salt(inp: Mapping[str, Any]) -> str:
    """The inputs that change a picture besides its prompt, seed and size, canonically."""
    rest = {k: v for k, v in inp.items() if k not in _OWN_ARGUMENTS}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), default=str)
