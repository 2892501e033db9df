"""BentoML 1.4.39's TimeoutMiddleware without its timer leak, applied by install().

BentoML's TimeoutMiddleware (traffic.timeout) has two costs (bentoml/_internal/server/http/
traffic.py, TimeoutMiddleware.__call__):

- it schedules a timer for every request with `loop.call_later(timeout, ...)` and never
  cancels it: each request leaves a timer handle and a future in the event loop's schedule for
  the whole timeout. At 1,000 requests/s and this service's 300 s timeout that is about
  300,000 live timers per worker: measured here, the worker's memory grew by 125 MB over the
  first 300 s of a soak, and the garbage collector's passes over them stopped the worker for
  more than a second at a time (tracemalloc pointed at the call_later line);
- it runs the rest of the app in a task of its own and waits for it: two more turns of the
  event loop for every request. Under overload a turn takes tens of milliseconds (thousands of
  connections to read), so each admitted request waited two of them more.

The replacement keeps BentoML's behaviour (504 with its message if no response has started
within the timeout; none once it has) with `asyncio.timeout` around the app in the request's
own task: its one timer is cancelled when the request ends, and no task is created.

BentoML builds its middleware list by importing the class from that module at each app build
(bentoml/_internal/server/base_app.py), so replacing the module's attribute is enough.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

from onnx_serving._patches import Patch, Target


class TimeoutMiddleware(traffic.TimeoutMiddleware):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        deadline = asyncio.timeout(self.timeout)
        started = False

        async def _send(message: Any) -> None:
            nonlocal started
            if not started:
                started = True
                deadline.reschedule(None)  # as BentoML's: no timeout once the response starts
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, _send)
        except TimeoutError:
            if not deadline.expired() or started:
                raise  # the app's own TimeoutError
            message = f"Not able to process the request in {self.timeout} seconds"
            await JSONResponse({"error": message}, status_code=504)(scope, receive, send)


def apply() -> None:
    traffic.TimeoutMiddleware = TimeoutMiddleware  # type: ignore[misc]


PATCH = Patch(
    name="bentoml-request-timeout",
    why="one cancelled timer per request instead of one live for the whole timeout, and no "
    "task of its own",
    upstream="to file at bentoml/BentoML: 'TimeoutMiddleware leaves a call_later timer per "
    "request for the whole traffic.timeout: at 1,000 req/s and timeout 300, ~300,000 live "
    "timers and +125 MB per worker; reproduce with a 5-minute load at 1,000 req/s and "
    "tracemalloc; fix: asyncio.timeout around the app in the request's task'",
    versions={"bentoml": "1.4.39"},
    targets=(
        Target(
            "bentoml._internal.server.http.traffic",
            "TimeoutMiddleware",
            uses=("self.timeout", "self.app", "call_later"),
        ),
        Target(
            "bentoml._internal.server.base_app",
            uses=("from .http.traffic import TimeoutMiddleware",),
        ),
    ),
    apply=apply,
    in_effect=lambda: traffic.TimeoutMiddleware is TimeoutMiddleware,
)
