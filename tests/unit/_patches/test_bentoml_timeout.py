"""BentoML's request timeout as patched (_patches/bentoml_timeout.py)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "bentoml-1.4.39"])
def test_the_request_timeout_leaves_no_timer_behind(fixed: bool) -> None:
    """_patches.bentoml_timeout: BentoML's TimeoutMiddleware kept one timer per request for the
    whole timeout and ran the app in a task of its own; the fixed one cancels its timer when the
    request ends, runs the app in the request's task, and still answers 504."""
    import asyncio

    from onnx_serving._patches.bentoml_timeout import TimeoutMiddleware

    # The fixed class, or the one it fixes (its base: BentoML's own).
    middleware = TimeoutMiddleware if fixed else TimeoutMiddleware.__bases__[0]

    tasks: set[object] = set()

    async def quick(scope: dict, receive: object, send: object) -> None:
        tasks.add(asyncio.current_task())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def slow(scope: dict, receive: object, send: object) -> None:
        await asyncio.sleep(10)

    async def run() -> tuple[int, list[int]]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        def live_timers() -> int:  # the loop's schedule: private, but exactly the point
            return sum(not h.cancelled() for h in asyncio.get_running_loop()._scheduled)

        before = live_timers()
        for _ in range(100):
            await middleware(quick, timeout=300)({"type": "http"}, None, send)
        left = live_timers() - before
        sent.clear()
        await middleware(slow, timeout=0.05)({"type": "http"}, None, send)
        return left, [m["status"] for m in sent if m["type"] == "http.response.start"]

    left, statuses = asyncio.run(run())
    assert statuses == [504]
    assert left == (0 if fixed else 100)  # the original keeps one per request for 300 s
    assert len(tasks) == (1 if fixed else 100)  # the original made a task per request
