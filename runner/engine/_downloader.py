"""The downloaders: fetch each delivered image, verify it, write it atomically, record it.

A feeder hands `pending` images from the store to `downloads` workers. A worker fetches the
signed URL without the token, refreshing it through the workflow (or the blob route) when it
has expired; checks the bytes (`inspect_image`: the requested format and exact size read
from the header before a pixel is decoded, so a decompression bomb is refused unopened; then
a strict decode within the byte limit); writes them to a path made only from the cell key
and image index (temp, fsync, rename, directory fsync), hashing them as it writes; then
records path, sha256 and size. The check, the hash and the write are one trip to a worker
thread per image (`run_whole`: it runs whole even when its caller is cancelled), and the
folder's fsync is shared by the downloaders that renamed into it meanwhile (`FolderSyncs`:
an fsync that started after this image's rename), so the record follows a durable file.
`lost` is recorded only when the service no longer has the blob, or the bytes stay wrong
after every try.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runner.api import Client, Workflow
from runner.disk import FolderSyncs, atomic_write_hashed, image_path
from runner.engine._images import InvalidImage, VerifiedImage, check_image, inspect_image
from runner.engine._pacing import Backoff, Outage, is_outage, retrying
from runner.engine._shared import Changes, RunStats
from runner.engine._threads import run_whole
from runner.errors import NotFoundError, RetryableError, UrlExpiredError
from runner.store import PendingImage, Store

log = structlog.get_logger(__name__)
MAX_TRIES = 8

ImageKey = tuple[int, int]  # (attempt id, image index)


@dataclass(frozen=True)
class FetchedImage:
    """An image's bytes, checked: they decode as an image of the requested size."""

    content: bytes
    info: VerifiedImage


class ImageFetcher:
    """Fetches one image's verified bytes through the workflow and blob routes, with retries.

    Shared by the downloaders and `zbatch verify --repair`. It remembers signed URLs; when one
    has expired (or fails), it fetches the workflow again for fresh ones, or refreshes the
    blob by its id, and tries again with backoff.
    """

    def __init__(
        self, client: Client, backoff: Backoff, *, max_bytes: int, outage: Outage | None = None
    ) -> None:
        self.client = client
        self.backoff = backoff
        self.max_bytes = max_bytes
        self.outage = outage  # the run's: an outage is waited out, not counted as tries
        self._urls: dict[ImageKey, tuple[str, datetime | None]] = {}

    def remember_urls(self, attempt_id: int, wf: Workflow) -> None:
        """Keep the signed URLs of a workflow's images, so a download needs no extra call."""
        for image in wf.images:
            if image.url:
                self._urls[(attempt_id, image.index)] = (image.url, image.url_expires_at)

    async def fetch(
        self, item: PendingImage, *, keep: Callable[[bytes], str] | None = None
    ) -> FetchedImage | str:
        """The image's verified bytes, or the reason they could not be had.

        A reason means the service no longer has the image, or its bytes stayed wrong
        through `MAX_TRIES` tries. API errors other than retryable ones and 404 propagate.
        `keep` (the downloader's atomic write) is given the bytes once they pass the check,
        in the same worker thread, and returns their sha256 (hashed as it wrote them); what
        it raises propagates.
        """
        key = (item.attempt_id, item.index)
        width, height = int(item.request["width"]), int(item.request["height"])
        fmt = str(item.request.get("outputFormat") or "jpeg")
        problem = "no usable URL"
        expired = False
        for tries in range(MAX_TRIES):
            if tries and not expired:  # an expired URL is refreshed at once, not backed off
                await self.backoff.pause(tries - 1)
            url = await self._url_for(item)
            if url is None:
                break
            try:
                got = await self.client.download(url, max_bytes=self.max_bytes)
                if not got.content_type.startswith("image/"):
                    raise InvalidImage(f"Content-Type is {got.content_type or 'missing'}")
                info = await run_whole(
                    functools.partial(
                        _check_then_keep,
                        got.content,
                        keep,
                        width=width,
                        height=height,
                        output_format=fmt,
                        max_bytes=self.max_bytes,
                    )
                )
            except (UrlExpiredError, NotFoundError, RetryableError, InvalidImage) as exc:
                problem = str(exc)
                expired = isinstance(exc, UrlExpiredError)
                self._urls.pop(key, None)  # fetch a fresh URL next time
                log.warning("download_retry", cell=item.cell_key, index=item.index, error=problem)
                if self.outage is not None and isinstance(exc, RetryableError) and is_outage(exc):
                    # ServiceOutage once it lasts --give-up-after. In an outage of the whole
                    # network the next try waits at the fresh URL's `retrying` (the outage's),
                    # so one outage costs an image one try, not all of them.
                    self.outage.failed(exc)
                continue
            if self.outage is not None:
                self.outage.succeeded()
            return FetchedImage(got.content, info)
        return problem

    async def _url_for(self, item: PendingImage) -> str | None:
        """A signed URL: the one remembered from the workflow's answer, or fetched fresh.

        A remembered URL is tried whatever its `urlExpiresAt` says: that instant is on the
        service's clock, not ours (the emulator's starts at 2026-01-01), and judging it by
        ours cost a GET of the workflow per image. An expired URL answers 401/403
        (`UrlExpiredError`), and `fetch` then comes here again for a fresh one.
        """
        key = (item.attempt_id, item.index)
        known = self._urls.get(key)
        if known is not None:
            return known[0]
        client = self.client
        if item.workflow_id is not None:
            wf_id = item.workflow_id
            try:
                wf = await retrying(
                    lambda: client.get(wf_id),
                    backoff=self.backoff,
                    what="refetch",
                    outage=self.outage,
                )
                self.remember_urls(item.attempt_id, wf)
                if key in self._urls:
                    return self._urls[key][0]
            except NotFoundError:
                pass  # the workflow is gone; the blob may still be there
        if item.blob_id is None:
            return None
        blob_id = item.blob_id
        try:
            blob = await retrying(
                lambda: client.refresh_blob(blob_id),
                backoff=self.backoff,
                what="refresh",
                outage=self.outage,
            )
        except NotFoundError:
            return None
        return blob.url


def _check_then_keep(
    data: bytes,
    keep: Callable[[bytes], str] | None,
    *,
    width: int,
    height: int,
    output_format: str,
    max_bytes: int,
) -> VerifiedImage:
    """The check, then `keep(data)` (its sha256) when the bytes passed: one worker-thread call.

    Without `keep`, `check_image` hashes the bytes itself.
    """
    if keep is None:
        return check_image(
            data, width=width, height=height, output_format=output_format, max_bytes=max_bytes
        )
    fmt = inspect_image(
        data, width=width, height=height, output_format=output_format, max_bytes=max_bytes
    )
    return VerifiedImage(
        sha256=keep(data), size_bytes=len(data), width=width, height=height, format=fmt
    )


class Downloader:
    """Feeds the store's pending images to a pool of `workers` download workers.

    A worker that cannot go on (the disk refused the image, the API an answer it cannot
    retry) raises: the error ends the run through the engine's task group.
    """

    def __init__(
        self,
        store: Store,
        fetcher: ImageFetcher,
        *,
        out_dir: Path,
        workers: int,
        stats: RunStats,
        changes: Changes,
    ) -> None:
        self.store = store
        self.fetcher = fetcher
        self.out_dir = out_dir
        self.workers = workers
        self.stats = stats
        self.changes = changes
        self._in_flight: set[ImageKey] = set()
        self._folder_syncs = FolderSyncs()

    def idle(self) -> bool:
        return not self._in_flight

    def remember_urls(self, attempt_id: int, wf: Workflow) -> None:
        """Keep the signed URLs of a workflow's images, so a download needs no extra call."""
        self.fetcher.remember_urls(attempt_id, wf)

    async def run(self) -> None:
        """Start the workers, then feed them whatever becomes pending, until cancelled."""
        send, receive = anyio.create_memory_object_stream[PendingImage](self.workers)
        async with send, anyio.create_task_group() as tg:
            for _ in range(self.workers):
                tg.start_soon(self._worker, receive.clone())
            receive.close()
            await self._feed(send)

    async def _feed(self, send: MemoryObjectSendStream[PendingImage]) -> None:
        while True:
            changed = self.changes.notice()  # new images come with a finished attempt
            fresh = await self.store.pending_images(self.workers * 4, skip=self._in_flight)
            for item in fresh:
                self._in_flight.add((item.attempt_id, item.index))
                await send.send(item)
            if not fresh:
                await changed.wait()

    async def _worker(self, receive: MemoryObjectReceiveStream[PendingImage]) -> None:
        async with receive:
            async for item in receive:
                try:
                    await self._download(item)
                finally:
                    self._in_flight.discard((item.attempt_id, item.index))
                    self.changes.notify()

    async def _download(self, item: PendingImage) -> None:
        fmt = str(item.request.get("outputFormat") or "jpeg")
        relative = image_path(item.cell_key, item.index, fmt)
        write = functools.partial(
            atomic_write_hashed, self.out_dir / relative, folder_syncs=self._folder_syncs
        )
        got = await self.fetcher.fetch(item, keep=write)  # written (durably) when it returns
        if isinstance(got, str):
            await self.store.mark_lost(item.attempt_id, item.index, got)
            self.stats.images_lost += 1
            log.error("image_lost", cell=item.cell_key, index=item.index, reason=got)
            return
        await self.store.mark_downloaded(
            item.attempt_id,
            item.index,
            path=relative.as_posix(),
            sha256=got.info.sha256,
            size_bytes=got.info.size_bytes,
            width=got.info.width,
            height=got.info.height,
        )
        self.stats.images_downloaded += 1
