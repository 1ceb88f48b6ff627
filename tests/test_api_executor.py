"""The screening thread (api/executor.py): results and errors come back to the right request,
the event loop never runs a screen, and cancelled requests do not stall the ones behind."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.executor import ScreeningThread
from screener.screen import Screener
from tests.test_api_unit import AS_OF, PATIENT, make, screen


def test_results_and_errors_reach_their_own_caller() -> None:
    pool = ScreeningThread()
    loop_thread: list[int] = []

    def job(i: int) -> tuple[int, int]:
        if i % 7 == 3:
            raise KeyError(i)
        return i, threading.get_ident()

    async def main() -> list[Any]:
        loop_thread.append(threading.get_ident())
        return await asyncio.gather(*(pool.run(job, i) for i in range(300)),
                                    return_exceptions=True)

    out = asyncio.run(main())
    for i, r in enumerate(out):
        if i % 7 == 3:
            assert isinstance(r, KeyError) and r.args == (i,)
        else:
            assert r[0] == i
            assert r[1] != loop_thread[0]          # never on the event loop's thread
    assert len({r[1] for r in out if not isinstance(r, BaseException)}) == 1  # one thread


def test_cancelled_request_does_not_stall_the_rest() -> None:
    pool = ScreeningThread()
    gate = threading.Event()

    async def main() -> list[int]:
        slow = asyncio.ensure_future(pool.run(gate.wait, 5))
        waiting = asyncio.ensure_future(pool.run(lambda: 1))   # queued behind the slow one
        await asyncio.sleep(0.05)
        waiting.cancel()                                        # its client went away
        gate.set()
        await slow
        return [await pool.run(lambda k=k: k) for k in range(3)]

    # bounded: a stalled queue fails the test instead of hanging the suite
    async def bounded() -> list[int]:
        return await asyncio.wait_for(main(), timeout=10)

    assert asyncio.run(bounded()) == [0, 1, 2]


def test_the_service_screens_on_the_screening_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = Screener.screen

    def spy(self: Screener, *a: Any, **k: Any) -> Any:
        seen.append(threading.current_thread().name)
        return real(self, *a, **k)

    monkeypatch.setattr(Screener, "screen", spy)
    with TestClient(create_app(make())) as c:
        for _ in range(3):
            assert screen(c, {"patient": PATIENT, "as_of": AS_OF}).status_code == 200
    assert seen == ["screening"] * 3
