"""A cheap hand-off of blocking work to worker threads, that runs whole once handed over.

`run_whole(fn)` runs `fn()` on one of the engine's worker threads (a `ThreadPoolExecutor`,
whose work queue is a `SimpleQueue`; the result comes back through the loop's
`call_soon_threadsafe`). It replaces `anyio.to_thread.run_sync` for the per-image call,
where anyio's hand-off (its `Queue.put` -> `Condition.notify`, a cancel scope and a
capacity limiter per call) was the run's single costliest frame.

Cancellation keeps anyio's default (`abandon_on_cancel=False`): a caller cancelled while
`fn` runs waits for `fn` to end, then the cancellation goes on. The work is never abandoned
half-way and its caller never goes on as if it had not run. (While it waits so, anyio keeps
delivering the cancellation, once per loop turn: a cost paid only by a cancelled run, for
the length of one image's work.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Threads start as calls need them (an idle one is reused), up to this many at once.
MAX_WORKERS = 64

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="zbatch-worker")
    return _pool


async def run_whole(fn: Callable[[], T]) -> T:
    """`fn()` on a worker thread; a cancelled caller waits for it to end, then is cancelled."""
    future = asyncio.get_running_loop().run_in_executor(_executor(), fn)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                raise
            cancelled = True  # the work runs whole: wait for it, then be cancelled
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result
