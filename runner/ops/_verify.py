"""`zbatch verify`: re-hash every downloaded image against its record; `--repair` fetches again.

Each downloaded image's file is read in 1 MiB chunks in a worker thread (never on the event
loop) and its size and sha256 compared with what the downloader recorded, then decoded with
the downloader's own strict check (`engine.check_image`: a JPEG whose entropy-coded data is
damaged fails it, though its sha256 was recorded before that check was strict). A file that
is gone is `missing`; one whose bytes differ, or do not decode cleanly, is `corrupt`.
Without `--repair` this only reads (the database read-only, no lock: safe during a run).
With `--repair` (the batch lock held) each damaged image is fetched again through the
shared `ImageFetcher` (the workflow's fresh URL, else the blob route): bytes with the
recorded sha256 are written back atomically (`image:repaired`); when the service no longer
has them, or gives other bytes, the image becomes `lost` with the reason, and
`zbatch retry OUT --state lost` remakes its cell. When a repair changed anything, the
dataset (`metadata.jsonl`, and `.txt` captions when the batch's recorded run settings say
`captions: txt`) is written again, as a run ends.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from runner.api import Client
from runner.dataset import HERE, RecordAt, open_record, refresh_dataset
from runner.disk import OutFolder, atomic_write_bytes
from runner.engine import Backoff, FetchedImage, ImageFetcher, InvalidImage, check_image
from runner.ops._retry import batch_settings
from runner.ops._run import Target
from runner.ops._token import has_token, no_token
from runner.store import PendingImage, Store, StoredImage, mark_image_refetched

log = structlog.get_logger(__name__)
CHUNK_BYTES = 1024 * 1024
PAGE = 256  # images read from the store at a time: memory stays flat for any batch
HASHERS = 4  # files hashed at once
LISTED = 20
MAX_IMAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Damage:
    """One downloaded image whose file does not match its record."""

    cell_key: str
    index: int
    path: str
    problem: str  # missing | corrupt
    detail: str
    recorded_bad: bool = False  # the file hashes as recorded, but does not decode


@dataclass
class VerifyReport:
    """What verification found and, with --repair, what it did about it."""

    checked: int = 0
    missing: int = 0
    corrupt: int = 0
    repaired: int = 0
    lost: int = 0  # marked lost by --repair: the service no longer has them
    damage: list[Damage] = field(default_factory=list)  # the first LISTED found
    repair: bool = False
    offline: bool = False  # --repair without a token found nothing to repair

    @property
    def damaged(self) -> int:
        return self.missing + self.corrupt

    @property
    def intact(self) -> bool:
        """Every downloaded image's file matches its record (after repairs)."""
        return self.damaged == self.repaired


def hash_file(path: Path) -> tuple[str, int] | str | None:
    """The sha256 and size of `path`, streamed; None when there is no such file, or why it
    cannot be read (permissions, an I/O error). Blocking."""
    digest, size = hashlib.sha256(), 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    return digest.hexdigest(), size


async def verify_batch(
    out: Path,
    *,
    client: Client | None = None,
    backoff: Backoff | None = None,
    at: RecordAt = HERE,
) -> VerifyReport:
    """Check every downloaded image of the batch in `out` (its record at `at`: OUT/batch.sqlite
    by default); repair through `client` if given (the batch lock taken)."""
    store = await open_record(out, at, read_only=client is None)
    fetcher = None
    if client is not None:
        fetcher = ImageFetcher(client, backoff or Backoff(), max_bytes=MAX_IMAGE_BYTES)
    report = VerifyReport(repair=client is not None)
    limiter = anyio.CapacityLimiter(HASHERS)
    async with store:
        captions = None  # with --repair: the batch's, to write the dataset after repairs
        if client is not None:
            captions = (await batch_settings(store, "zbatch verify --repair")).captions
        after = (0, -1)
        while page := await store.downloaded_images(after, PAGE):
            after = (page[-1].attempt_id, page[-1].index)
            damaged: list[Damage | None] = [None] * len(page)
            async with anyio.create_task_group() as tg:
                for n, image in enumerate(page):
                    tg.start_soon(_check, out, image, limiter, damaged, n)
            report.checked += len(page)
            for image, damage in zip(page, damaged, strict=True):
                if damage is not None:
                    await _found(store, out, fetcher, image, damage, report)
        if captions is not None and (report.repaired or report.lost):
            await refresh_dataset(store, out, captions=captions, rebuild=True)
    log.info(
        "batch_verified",
        checked=report.checked,
        missing=report.missing,
        corrupt=report.corrupt,
        repaired=report.repaired,
        lost=report.lost,
    )
    return report


async def _check(
    out: Path,
    image: StoredImage,
    limiter: anyio.CapacityLimiter,
    results: list[Damage | None],
    n: int,
) -> None:
    got = await anyio.to_thread.run_sync(hash_file, out / image.path, limiter=limiter)

    def damage(problem: str, detail: str, recorded_bad: bool = False) -> Damage:
        return Damage(image.cell_key, image.index, image.path, problem, detail, recorded_bad)

    if got is None:
        results[n] = damage("missing", "no such file")
    elif isinstance(got, str):
        results[n] = damage("corrupt", f"cannot be read: {got}")
    elif got[1] != image.size_bytes:
        results[n] = damage("corrupt", f"{got[1]} bytes, recorded {image.size_bytes}")
    elif got[0] != image.sha256:
        results[n] = damage("corrupt", f"sha256 {got[0][:12]}…, recorded {image.sha256[:12]}…")
    else:
        check = functools.partial(decode_problem, out / image.path, image.request)
        if problem := await anyio.to_thread.run_sync(check, limiter=limiter):
            results[n] = damage("corrupt", problem, recorded_bad=True)


def decode_problem(path: Path, request: dict[str, Any]) -> str | None:
    """Why the image at `path` fails the downloader's strict check, or None. Blocking."""
    try:
        data = path.read_bytes()
        check_image(
            data,
            width=int(request["width"]),
            height=int(request["height"]),
            output_format=str(request.get("outputFormat") or "jpeg"),
            max_bytes=MAX_IMAGE_BYTES,
        )
    except InvalidImage as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return None


async def _found(
    store: Store,
    out: Path,
    fetcher: ImageFetcher | None,
    image: StoredImage,
    damage: Damage,
    report: VerifyReport,
) -> None:
    if damage.problem == "missing":
        report.missing += 1
    else:
        report.corrupt += 1
    if len(report.damage) < LISTED:
        report.damage.append(damage)
    # info, not warning: the report lists the damaged and the lost images (issue 15, item 12)
    log.info("image_damaged", cell=image.cell_key, index=image.index, problem=damage.problem)
    if fetcher is None:
        return
    item = PendingImage(
        attempt_id=image.attempt_id,
        index=image.index,
        blob_id=image.blob_id,
        cell_key=image.cell_key,
        workflow_id=image.workflow_id,
        request=image.request,
    )
    got = await fetcher.fetch(item)  # bytes that pass the strict check, or why none did
    if isinstance(got, FetchedImage) and (damage.recorded_bad or got.info.sha256 == image.sha256):
        write = functools.partial(atomic_write_bytes, out / image.path, got.content)
        await anyio.to_thread.run_sync(write)
        if got.info.sha256 == image.sha256:
            await store.mark_image_repaired(image.attempt_id, image.index, image.sha256)
        else:  # the recorded sha256 was of the bad bytes: the good ones are recorded now
            await mark_image_refetched(
                store, image.attempt_id, image.index, got.info.sha256, got.info.size_bytes
            )
        report.repaired += 1
        log.info("image_repaired", cell=image.cell_key, index=image.index)
        return
    reason = got if isinstance(got, str) else "the service's bytes differ from the recorded sha256"
    await store.mark_image_missing(image.attempt_id, image.index, f"{damage.problem}: {reason}")
    report.lost += 1
    log.info("image_lost", cell=image.cell_key, index=image.index, reason=reason)


def render_verify(report: VerifyReport, *, out: Path) -> str:
    """What `zbatch verify` prints: the verdict, the damage found, what repair did."""
    if report.intact:
        head = f"Intact: {report.checked} downloaded images match their sha256."
        if report.repaired:
            head = (
                f"Intact after repair: {report.checked} images checked, {report.repaired} repaired."
            )
    else:
        head = (
            f"Damaged: {report.damaged - report.repaired} of {report.checked} images do not match."
        )
    lines = [
        head,
        f"found       {report.missing} missing · {report.corrupt} corrupt",
    ]
    lines += [f"            {d.path}: {d.problem} ({d.detail})" for d in report.damage]
    if report.damaged > len(report.damage):
        lines.append(f"            … and {report.damaged - len(report.damage)} more")
    if report.repair:
        lines.append(
            f"repair      {report.repaired} fetched again · {report.lost} no longer on the service:"
            " marked lost"
        )
        if report.lost:
            lines.append(f"remake      zbatch retry {out} --state lost")
    elif report.offline:
        lines.append("repair      nothing to repair: the service was not asked (no token needed)")
    elif report.damaged:
        lines.append(f"repair      zbatch verify {out} --repair")
    return "\n".join(lines)


async def verify_out(
    out: Path, *, repair: bool, target: Target = Target(), at: RecordAt = HERE
) -> VerifyReport:
    """`zbatch verify OUT [--repair]`: with repair, through the API at `target` (its token or
    the environment's). Without a token, --repair first only checks: every image intact needs
    no service (the report says so: `offline`); a damaged one raises the missing token."""
    if at.url is None:
        OutFolder(out).existing_db()  # NotABatch before asking for a token
    if not repair:
        return await verify_batch(out, at=at)
    if not has_token(target):
        report = await verify_batch(out, at=at)
        if report.damaged:
            raise no_token(
                "zbatch verify --repair", f"{report.damaged} damaged images to fetch again"
            )
        report.offline = True
        return report
    async with Client(base_url=target.base_url, token=target.token) as client:
        return await verify_batch(out, client=client, at=at)
