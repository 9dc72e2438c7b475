"""`run_whole`: blocking work on a worker thread, run whole even when its caller is cancelled."""

from __future__ import annotations

import threading

import anyio
import pytest

from runner.engine._threads import run_whole


@pytest.mark.anyio
async def test_returns_the_result_from_another_thread() -> None:
    main = threading.get_ident()
    assert await run_whole(threading.get_ident) != main
    assert await run_whole(lambda: 6 * 7) == 42


@pytest.mark.anyio
async def test_raises_what_the_work_raised() -> None:
    def boom() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        await run_whole(boom)


@pytest.mark.anyio
async def test_a_cancelled_caller_waits_for_the_work_to_end() -> None:
    started, release = threading.Event(), threading.Event()
    steps: list[str] = []

    def work() -> str:
        started.set()
        release.wait(10)
        steps.append("work ended")
        return "kept"

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await run_whole(work)
                steps.append("caller went on")  # must not happen: it was cancelled
            finally:
                steps.append("caller left")

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, scope)
        await anyio.to_thread.run_sync(started.wait)
        scope.cancel()
        for _ in range(20):  # the cancellation is delivered while the work still runs
            await anyio.lowlevel.checkpoint()
        assert steps == []  # the caller has not left half-way
        release.set()
    assert scope.cancelled_caught
    assert steps == ["work ended", "caller left"]
