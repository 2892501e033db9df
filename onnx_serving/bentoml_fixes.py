"""A fix to BentoML 1.4.39, applied when the service module loads.

BentoML's TimeoutMiddleware (traffic.timeout) schedules a timer for every request with
`loop.call_later(timeout, ...)` and never cancels it: each request leaves a timer handle and
a future in the event loop's schedule for the whole timeout, answered or not
(bentoml/_internal/server/http/traffic.py, TimeoutMiddleware.__call__). At 1,000 requests/s
and this service's 300 s timeout that is about 300,000 live timers per worker: measured here,
the worker's memory grew by 125 MB over the first 300 s of a soak before it levelled off, and
the garbage collector's passes over them stopped the worker for more than a second at a time
(tracemalloc pointed at the call_later line). The replacement below is BentoML's middleware
with its timer cancelled once the response has started or the request has ended.

BentoML builds its middleware list by importing the class from that module at each app build
(bentoml/_internal/server/base_app.py), so replacing the module's attribute is enough.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse


class TimeoutMiddleware(traffic.TimeoutMiddleware):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        # The app may end without sending anything (a dropped connection): stop waiting then.
        fut.add_done_callback(lambda _: waiter.done() or waiter.set_result(None))
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                message = f"Not able to process the request in {self.timeout} seconds"
                await JSONResponse({"error": message}, status_code=504)(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()


def apply() -> None:
    traffic.TimeoutMiddleware = TimeoutMiddleware  # type: ignore[misc]
