"""The one thread of a worker process that runs screens, so the event loop never does.

Position: `api/` edge, between the async routes and `service` (which calls the engine).

Why not FastAPI's threadpool (`def` endpoints): each call there is a hand-off to an idle
thread and back, which on this project's 2-core VM measured about 340 us of CPU per request:
more than the rules engine's own work for a 38-criterion trial. durable_rules holds the GIL in
C, so more threads never screen in parallel anyway (processes do). Here one long-lived thread
takes jobs from a queue; when the service is busy it goes from one job to the next without
sleeping, and finished results reach the event loop through at most one pending wake-up at a
time, however many jobs end in between.

The event loop only parses HTTP and awaits; a slow screen (a large FHIR Bundle) delays other
screens of the same process but never the loop's health probes or other connections' I/O
(beyond the GIL the screening thread holds while it computes, as with any thread).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class ScreeningThread:
    def __init__(self, name: str = "screening") -> None:
        self._name = name
        self._jobs: deque[_Job] = deque()
        self._wake = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        # results waiting for the loop, per loop; a loop has a drain scheduled while listed here
        self._done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
        self._done = {}
        self._done_lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the screening thread; its result or exception, here."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=self._name,
                                                daemon=True)
                self._thread.start()
            self._jobs.append((loop, fut, fn, args))
            self._wake.notify()
        return await fut

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            with self._wake:
                while not jobs:
                    self._wake.wait()
                loop, fut, fn, args = jobs.popleft()
            if fut.cancelled():  # the client went away before its turn
                continue
            try:
                ok, value = True, fn(*args)
            except BaseException as e:  # noqa: BLE001 - delivered to the awaiting request
                ok, value = False, e
            self._deliver(loop, fut, ok, value)

    def _deliver(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], ok: bool,
                 value: Any) -> None:
        with self._done_lock:
            pending = self._done.get(loop)
            if pending is not None:
                pending.append((fut, ok, value))   # a drain is already scheduled
                return
            self._done[loop] = [(fut, ok, value)]
        try:
            loop.call_soon_threadsafe(self._drain, loop)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            with self._done_lock:
                self._done.pop(loop, None)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._done_lock:
            results = self._done.pop(loop, [])
        for fut, ok, value in results:
            if fut.cancelled():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
