"""The downloaders: fetch each delivered image, verify it, write it atomically, record it.

A feeder hands `pending` images from the store to `downloads` workers. A worker fetches the
signed URL without the token, refreshing it through the workflow (or the blob route) when it
has expired; checks the bytes decode as an image of the requested size within the byte
limit; writes them to a path made only from the cell key and image index (temp, fsync,
rename, directory fsync); then records path, sha256 and size. `lost` is recorded only when
the service no longer has the blob, or the bytes stay wrong after every try.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from runner.errors import ApiError, NotFoundError, RetryableError, UrlExpiredError
from runner.files import InvalidImage, atomic_write_bytes, image_path, verify_image
from runner.limits import retrying
from runner.models import Workflow
from runner.records import PendingImage

if TYPE_CHECKING:
    from runner.engine import Engine

log = structlog.get_logger(__name__)
MAX_TRIES = 8
URL_MARGIN = timedelta(seconds=5)

ImageKey = tuple[int, int]  # (attempt id, image index)


class Downloader:
    """Feeds pending images to a pool of download workers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._urls: dict[ImageKey, tuple[str, datetime | None]] = {}
        self._in_flight: set[ImageKey] = set()

    def idle(self) -> bool:
        return not self._in_flight

    def remember_urls(self, attempt_id: int, wf: Workflow) -> None:
        """Keep the signed URLs of a workflow's images, so a download needs no extra call."""
        for image in wf.images:
            if image.url:
                self._urls[(attempt_id, image.index)] = (image.url, image.url_expires_at)

    async def run(self, tg: TaskGroup) -> None:
        workers = self.engine.config.downloads
        send, receive = anyio.create_memory_object_stream[PendingImage](workers)
        async with send:
            for _ in range(workers):
                tg.start_soon(self._worker, receive.clone())
            receive.close()
            while True:
                fresh = [
                    item
                    for item in await self.engine.store.pending_images(workers * 4)
                    if (item.attempt_id, item.index) not in self._in_flight
                ]
                for item in fresh:
                    self._in_flight.add((item.attempt_id, item.index))
                    await send.send(item)
                if not fresh:
                    await self.engine.wait_wake(0.5)

    async def _worker(self, receive: MemoryObjectReceiveStream[PendingImage]) -> None:
        async with receive:
            async for item in receive:
                try:
                    await self._download(item)
                except ApiError as exc:
                    self.engine.fail(exc)
                finally:
                    self._in_flight.discard((item.attempt_id, item.index))
                    self.engine.wake()

    async def _download(self, item: PendingImage) -> None:
        engine, key = self.engine, (item.attempt_id, item.index)
        width, height = int(item.request["width"]), int(item.request["height"])
        fmt = str(item.request.get("outputFormat") or "jpeg")
        problem = "no usable URL"
        for tries in range(MAX_TRIES):
            if tries:
                await anyio.sleep(engine.backoff.delay_s(tries - 1))
            url = await self._url_for(item)
            if url is None:
                break
            try:
                got = await engine.client.download(url, max_bytes=engine.config.max_image_bytes)
                if not got.content_type.startswith("image/"):
                    raise InvalidImage(f"Content-Type is {got.content_type or 'missing'}")
                info = await anyio.to_thread.run_sync(
                    functools.partial(
                        verify_image,
                        got.content,
                        width=width,
                        height=height,
                        max_bytes=engine.config.max_image_bytes,
                    )
                )
            except (UrlExpiredError, NotFoundError, RetryableError, InvalidImage) as exc:
                problem = str(exc)
                self._urls.pop(key, None)  # fetch a fresh URL next time
                log.warning("download_retry", cell=item.cell_key, index=item.index, error=problem)
                continue
            relative = image_path(item.cell_key, item.index, fmt)
            target = engine.config.out_dir / relative
            await anyio.to_thread.run_sync(atomic_write_bytes, target, got.content)
            await engine.store.mark_downloaded(
                item.attempt_id,
                item.index,
                path=relative.as_posix(),
                sha256=info.sha256,
                size_bytes=info.size_bytes,
                width=info.width,
                height=info.height,
            )
            engine.stats.images_downloaded += 1
            return
        await engine.store.mark_lost(item.attempt_id, item.index, problem)
        engine.stats.images_lost += 1
        log.error("image_lost", cell=item.cell_key, index=item.index, reason=problem)

    async def _url_for(self, item: PendingImage) -> str | None:
        """A signed URL that has not expired: remembered, or fetched fresh."""
        key = (item.attempt_id, item.index)
        known = self._urls.get(key)
        if known is not None:
            url, expires_at = known
            if expires_at is None or expires_at - URL_MARGIN > datetime.now(UTC):
                return url
        engine = self.engine
        if item.workflow_id is not None:
            wf_id = item.workflow_id
            try:
                wf = await retrying(
                    lambda: engine.client.get(wf_id), backoff=engine.backoff, what="refetch"
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
                lambda: engine.client.refresh_blob(blob_id), backoff=engine.backoff, what="refresh"
            )
        except NotFoundError:
            return None
        return blob.url
