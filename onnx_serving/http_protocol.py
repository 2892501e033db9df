"""uvicorn's HTTP protocol (0.54, httptools) with what it lacks: load shedding before the
app, and request read timeouts.

Shedding: a POST that admission control (onnx_serving/admission.py) has no room for gets its
503 right here, once its headers are parsed: no task is created and no middleware runs, so a
refusal costs the worker a fraction of the lightest answer
(README, Operating it). Its body, if any, is read and dropped, and the
connection stays open for the client's next request. Admitted POSTs are counted until their
task ends. Other methods (probes, /metrics, GETs) are never shed.

Read timeouts:

uvicorn only times out a connection that sits idle *after* a response (timeout_keep_alive,
armed in on_response_complete). A connection that was opened and sent nothing, part of the
request line and headers, or part of a body, is kept forever (the ASGI app is not even
called before the headers are complete). This protocol adds:

  HTTP_HEADER_TIMEOUT  seconds from a fresh connection's opening, or from the first byte
                       of a request on a reused one, until its headers are complete;
  HTTP_BODY_TIMEOUT    seconds of silence allowed while a request body is being received
                       (reset on every chunk; not counted while uvicorn pauses reading
                       because the app is not consuming the body).

On either, the client gets `408 Request Timeout` with `Connection: close` (unless a response
has already started) and the connection is closed. 0 turns a timeout off. Each connection
notes its deadline and one sweep a worker checks them all a few times a timeout (uvicorn's
keep-alive timeout too): a timer per request would cost more than a refusal.

BentoML 1.4.39 builds uvicorn.Config without `http=` (_bentoml_impl/worker/service.py), so
"auto" is used; `install()` points "auto" at this protocol. Call it at import of the service
module: the worker imports it before creating its uvicorn.Config.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import metrics
from .admission import Admission
from .config import settings
from .drain import DRAINER

ADMISSION = Admission(settings())

_MSG = json.dumps(
    {"error": "the request was not received in time (HTTP_HEADER_TIMEOUT, HTTP_BODY_TIMEOUT)"}
).encode()
_RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_MSG)).encode() + b"\r\nconnection: close\r\n\r\n" + _MSG
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout = settings().http_header_timeout_s
    body_timeout = settings().http_body_timeout_s

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # When what the connection waits for is due, and what to do then (the sweep calls it).
        self._deadline: float | None = None
        self._overdue: Callable[[], None] = self._on_header_timeout

    def _expect(self, seconds: float | None, overdue: Callable[[], None]) -> None:
        self._deadline = self.loop.time() + seconds if seconds else None
        self._overdue = overdue

    # A fresh connection: the clock for its first request's headers starts now.
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ADMISSION.start()
        SWEEP.start(
            self.connections, self.header_timeout, self.body_timeout, self.timeout_keep_alive
        )
        self._expect(self.header_timeout, self._on_header_timeout)

    # A reused connection: the clock starts at the request's first byte.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None or self._overdue == self.timeout_keep_alive_handler:
            self._expect(self.header_timeout, self._on_header_timeout)

    def on_headers_complete(self) -> None:
        self._expect(self.body_timeout, self._on_body_timeout)  # on_message_complete clears it
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._deadline is not None:
            self._expect(self.body_timeout, self._on_body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle.response_complete and not self.pipeline:
            # Answered before its body ended (a refusal): the connection is idle from now on.
            self._expect(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        else:
            self._deadline = None

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timeout kept by the sweep instead of a timer per
        # response (uvicorn's data_received cancels a timer that is never set).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._deadline is None:  # unless the next request has begun already
            self._expect(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def _start_asgi_task(self, cycle, app) -> None:
        # Called for each request once its headers are parsed (or, pipelined, once the
        # previous response is complete).
        if cycle.scope["method"] != "POST":
            return super()._start_asgi_task(cycle, app)
        if not ADMISSION.admit():
            return self._refuse(cycle)
        # uvicorn's own _start_asgi_task (BentoML leaves reset_contextvars off), and the count.
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(ADMISSION.done)
        self.tasks.add(task)

    def _refuse(self, cycle) -> None:
        keep_alive = cycle.keep_alive and not DRAINER.draining
        # A complete response: on_body and on_message_complete drop the rest of the request.
        cycle.response_started = cycle.response_complete = True
        metrics.SHED.inc()
        self.transport.write(ADMISSION.refusal(keep_alive))
        if keep_alive:
            self.on_response_complete()  # what a finished cycle does: keep-alive, pipelining
        else:
            self.transport.close()

    def check_deadline(self, now: float) -> None:
        """Called by the sweep: act if what this connection waits for is overdue."""
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if not self.transport.is_closing():
            self._overdue()

    def _on_header_timeout(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's headers stalled while the previous response is being
            # produced: let that response finish first.
            self._expect(self.header_timeout, self._on_header_timeout)
            return
        metrics.REJECTIONS.labels(reason="timeout").inc()
        self.transport.write(_RESPONSE_408)
        self.transport.close()

    def _on_body_timeout(self) -> None:
        if self.flow.read_paused:  # back-pressure: the app isn't reading, not the client's fault
            self._expect(self.body_timeout, self._on_body_timeout)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.response_started = True  # the app's own response, if any, is dropped
            metrics.REJECTIONS.labels(reason="timeout").inc()
            self.transport.write(_RESPONSE_408)
        self.transport.close()  # connection_lost tells the app: http.disconnect


class Sweep:
    """One task per worker that checks every connection's deadline (headers, body, keep-alive),
    a few times per timeout (at least once a second)."""

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    def start(self, connections: Iterable[HttpToolsProtocol], *timeouts: float | None) -> None:
        on = [t for t in timeouts if t]
        if self._task is None and on:
            period = min([t / 4 for t in on] + [1.0])
            self._task = asyncio.get_running_loop().create_task(self._run(connections, period))

    async def _run(self, connections: Iterable[HttpToolsProtocol], period: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for conn in list(connections):
                if isinstance(conn, GuardedHttpToolsProtocol):
                    conn.check_deadline(now)


SWEEP = Sweep()


class FairAcceptLoop(asyncio.SelectorEventLoop):
    """asyncio's event loop, accepting as many connections per wake-up as the queue needs.

    uvloop's libuv accepts one connection per turn of the loop (libuv#3696, since 1.45): under
    overload a turn takes tens of milliseconds, and new connections, probes among them, waited
    in the kernel's queue for seconds (753 waiting, /readyz answered after 8 s, with 1,024
    clients). asyncio's own loop accepts every waiting connection at once, so with several
    workers on one socket the first to wake took a whole burst (16 keep-alive connections on
    one worker, the other idle). This one accepts one connection per wake-up while that
    empties the queue, and twice as many each time it does not, so workers share bursts and
    a deep queue is drained in a few turns.
    """

    _cap = 1
    _accepted = 0

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None,
                           backlog=100, *args):  # type: ignore[override]  # fmt: skip
        self._accepted = 0
        super()._accept_connection(protocol_factory, sock, sslcontext, server, self._cap, *args)
        self._cap = min(self._cap * 2, backlog) if self._accepted >= self._cap else 1

    def _accept_connection2(self, *args, **kwargs):  # type: ignore[override]
        self._accepted += 1
        return super()._accept_connection2(*args, **kwargs)


def fair_loop_factory(use_subprocess: bool = False) -> type[asyncio.AbstractEventLoop]:
    return FairAcceptLoop


def install() -> None:
    """Make uvicorn's default ("auto") HTTP protocol this one, on FairAcceptLoop."""
    import uvicorn.config

    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedHttpToolsProtocol"
    uvicorn.config.LOOP_FACTORIES["auto"] = f"{__name__}:fair_loop_factory"
