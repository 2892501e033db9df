"""uvicorn's HTTP protocol (0.54, httptools) with what it lacks: load shedding before the
app, bounded headers, and request read timeouts and a minimum body rate.

Headers: a request line and headers past HTTP_MAX_HEADER_BYTES in all, or more than
HTTP_MAX_HEADERS of them, get `431` and the connection is closed as the limit is crossed:
nothing past it is kept (uvicorn keeps every header it is sent).

Slow clients hold no admission slot: a POST whose body (Content-Length up to 64 KiB, uvicorn's
own read buffer) has not fully arrived has no task until it has, and is admitted (or refused)
then; a larger or chunked body is admitted or refused when its headers arrive (so that a
refused one is not read), streamed into the app, and takes its slot only once it is whole.
Every body must keep arriving at HTTP_BODY_MIN_RATE bytes a second (measured over windows of
RATE_WINDOW_S) or the connection gets `408`.

Shedding: a POST that admission control (onnx_serving/edge/admission.py) has no room for gets its
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
"auto" is used; `apply()` (by onnx_serving._patches.install) points "auto" at this protocol,
at import of the service module: the worker imports it before creating its uvicorn.Config.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from onnx_serving import errors, metrics
from onnx_serving._patches import Patch, Target
from onnx_serving._patches.uvicorn_drain import DRAINER
from onnx_serving.config import settings
from onnx_serving.edge.admission import worker_admission
from onnx_serving.edge.route_table import header

ADMISSION = worker_admission()
RATE_WINDOW_S = 4.0
_STATUS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def closing_response(status: int, reason: str, message: str, where: str) -> bytes:
    """A whole JSON error response that closes the connection (counted and logged once)."""
    body = errors.refused(status, reason, message, where)
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n" % (status, _STATUS[status]),
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body),
            body,
        )
    )


class HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose headers are too large."""


class CoalescedWrites:
    """A connection's transport whose writes of one turn of the event loop go out as one.

    uvicorn writes a response's status line and headers, then its body: two `send` calls,
    two packets (TCP_NODELAY), each through asyncio's Python transport: about 15 µs of a
    one-row request's CPU. Here they are joined (pieces past 64 KiB are written as they
    are, not copied) and written once, at the end of the turn; close() writes what is held
    first. Everything else is the transport's own."""

    __slots__ = ("_held", "_loop", "_size", "_transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport, self._loop = transport, loop
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)
        self._size += len(data)

    def flush(self) -> None:
        held, size = self._held, self._size
        if not held:
            return
        self._held, self._size = [], 0
        if self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        elif size <= 65_536:
            self._transport.write(b"".join(held))
        else:
            for data in held:
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout = settings().http_header_timeout_s
    body_timeout = settings().http_body_timeout_s
    min_rate = settings().http_body_min_rate
    max_header_bytes = settings().http_max_header_bytes
    max_headers = settings().http_max_headers

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # When what the connection waits for is due, and what to do then (the sweep calls it).
        self._deadline: float | None = None
        self._overdue: Callable[[], None] = self._on_header_timeout
        self._header_bytes = 0
        self._deferred: tuple = ()  # (cycle, app) of a POST waiting for its whole body
        self._receiving: list | None = None  # [cycle, state] of a large body being streamed
        self._rate_since: float | None = None  # the body's current rate window, and its bytes
        self._rate_bytes = 0

    def _expect(self, seconds: float | None, overdue: Callable[[], None]) -> None:
        self._deadline = self.loop.time() + seconds if seconds else None
        self._overdue = overdue

    # A fresh connection: the clock for its first request's headers starts now.
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescedWrites(transport, self.loop)  # what each cycle writes to
        ADMISSION.start()
        SWEEP.start(
            self.connections, self.header_timeout, self.body_timeout, self.timeout_keep_alive
        )
        self._expect(self.header_timeout, self._on_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_deferred()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with its plain-text 400 for a request that doesn't parse made JSON, and
        # 431 for headers past their limits.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._header_bytes < 0:  # set by on_url / on_header
                message = (
                    f"the request's headers are too large: at most {self.max_headers} headers "
                    f"and {self.max_header_bytes:,} bytes with the request line "
                    "(HTTP_MAX_HEADERS, HTTP_MAX_HEADER_BYTES)"
                )
                response = closing_response(431, "headers_too_large", message, "headers")
            else:
                message = "not a valid HTTP/1.1 request"
                response = closing_response(400, "schema", message, "request line")
            self.transport.write(response)
            self.transport.close()

    # A reused connection: the clock starts at the request's first byte.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._deadline is None or self._overdue == self.timeout_keep_alive_handler:
            self._expect(self.header_timeout, self._on_header_timeout)

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            self._header_bytes = -1
            raise HeadersTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header_bytes or len(self.headers) >= self.max_headers:
            self._header_bytes = -1
            raise HeadersTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._expect(self.body_timeout, self._on_body_timeout)  # on_message_complete clears it
        self._rate_since, self._rate_bytes = self.loop.time(), 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._rate_bytes += len(body)
        if self._deadline is not None:
            self._expect(self.body_timeout, self._on_body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._rate_since = None
        state, self._receiving = self._receiving, None
        if state is not None and state[0] is self.cycle and state[1] == "receiving":
            state[1] = "counted"  # its whole body is here: from now on it takes a slot
            ADMISSION.receiving -= 1
            ADMISSION.in_flight += 1
        if self._deferred and self._deferred[0] is self.cycle:
            # The whole body is here: now the request may take a slot (or be refused).
            cycle, app = self._deferred
            self._leave_deferred()
            self._deadline = None
            self._admit(cycle, app)
            return
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
        if cycle.more_body and not cycle.waiting_for_100_continue and _small_body(cycle.scope):
            # Its body fits uvicorn's read buffer: wait for all of it before admitting.
            ADMISSION.receiving += 1
            self._deferred = (cycle, app)
            return
        self._admit(cycle, app)

    def _admit(self, cycle, app) -> None:
        if not ADMISSION.admit():
            return self._refuse(cycle)
        # uvicorn's own _start_asgi_task (BentoML leaves reset_contextvars off), and the count.
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        if not cycle.more_body:
            task.add_done_callback(ADMISSION.done)
            return
        # A large or chunked body, still arriving: the app streams it (to disk, for files),
        # but it holds no slot until it is whole (on_message_complete counts it then).
        ADMISSION.in_flight -= 1
        ADMISSION.receiving += 1
        state = self._receiving = [cycle, "receiving"]
        task.add_done_callback(lambda _: _release(state))

    def _leave_deferred(self) -> None:
        if self._deferred:
            self._deferred = ()
            ADMISSION.receiving -= 1

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
        """Called by the sweep: act if what this connection waits for is overdue, or if its
        body arrives slower than HTTP_BODY_MIN_RATE."""
        if self._rate_since is not None and self.min_rate:
            self._check_rate(now)
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if not self.transport.is_closing():
            self._overdue()

    def _check_rate(self, now: float) -> None:
        if self.flow.read_paused or self.transport.is_closing():
            # Back-pressure: the app isn't reading, not the client's fault. Start again.
            self._rate_since, self._rate_bytes = now, 0
            return
        elapsed = now - self._rate_since
        if elapsed < RATE_WINDOW_S:
            return
        if self._rate_bytes < self.min_rate * elapsed:
            self._rate_since = None
            self._timed_out(
                f"the request body arrived at {self._rate_bytes / elapsed:,.0f} bytes/s, slower "
                f"than HTTP_BODY_MIN_RATE={self.min_rate:,} bytes/s",
                "slow_body",
            )
        else:
            self._rate_since, self._rate_bytes = now, 0

    def _on_header_timeout(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's headers stalled while the previous response is being
            # produced: let that response finish first.
            self._expect(self.header_timeout, self._on_header_timeout)
            return
        message = (
            "the request's headers did not arrive within "
            f"HTTP_HEADER_TIMEOUT={self.header_timeout:g} s"
        )
        self.transport.write(closing_response(408, "timeout", message, "headers"))
        self.transport.close()

    def _on_body_timeout(self) -> None:
        if self.flow.read_paused:  # back-pressure: the app isn't reading, not the client's fault
            self._expect(self.body_timeout, self._on_body_timeout)
            return
        message = f"the request body stalled for HTTP_BODY_TIMEOUT={self.body_timeout:g} s"
        self._timed_out(message, "timeout")

    def _timed_out(self, message: str, reason: str) -> None:
        cycle = self.cycle
        metrics.SLOW_BODIES.inc()
        if cycle is not None and not cycle.response_started:
            cycle.response_started = True  # the app's own response, if any, is dropped
            where = f"{cycle.scope['method']} {cycle.scope['path']}"
            self.transport.write(closing_response(408, reason, message, where))
        self.transport.close()  # connection_lost tells the app: http.disconnect


def _release(state: list) -> None:
    """A large-body request's task ended: give back what it held (a slot or its place)."""
    if state[1] == "receiving":
        ADMISSION.receiving -= 1
    elif state[1] == "counted":
        ADMISSION.done()
    state[1] = "done"


def _small_body(scope: dict) -> bool:
    length = header(scope, b"content-length")  # None: chunked, no size known
    return length is not None and length.isdigit() and int(length) <= HIGH_WATER_LIMIT


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


def apply() -> None:
    """Make uvicorn's default ("auto") HTTP protocol this one."""
    import uvicorn.config

    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedHttpToolsProtocol"


def in_effect() -> bool:
    import uvicorn.config

    return uvicorn.config.HTTP_PROTOCOLS["auto"] == f"{__name__}:GuardedHttpToolsProtocol"


PATCH = Patch(
    name="uvicorn-http-protocol",
    why="load shedding before the app, bounded headers, header and body read timeouts, a "
    "minimum body rate",
    upstream="uvicorn has no header timeout, body rate or header count limit (Kludex/uvicorn#157 "
    "was closed in 2026 asking for new issues). To file: 'httptools protocol: a client that "
    "trickles headers or a body one byte every few seconds holds its connection (and, with "
    "BentoML, an admission slot) forever; reproduce with 300 sockets sending one byte every "
    "6 s; fix: header_timeout and body_min_rate settings checked in data_received'. "
    "BentoML builds uvicorn.Config without http= (bentoml/BentoML: to file, 'let the service "
    'config choose the uvicorn protocol class\'), so the "auto" entry is replaced',
    versions={"uvicorn": "0.54.0", "httptools": "0.9.0", "bentoml": "1.4.39"},
    targets=(
        Target("uvicorn.config", "HTTP_PROTOCOLS"),
        Target(
            "uvicorn.protocols.http.httptools_impl",
            "HttpToolsProtocol",
            uses=(
                "def connection_made",
                "def connection_lost",
                "def data_received",
                "def on_message_begin",
                "def on_url",
                "def on_header",
                "def on_headers_complete",
                "def on_body",
                "def on_message_complete",
                "def on_response_complete",
                "def _unset_keepalive_if_required",
                "def _start_asgi_task",
                "def timeout_keep_alive_handler",
                "self.connections",
                "self.timeout_keep_alive_task",
                "self.cycle",
                "self.pipeline",
                "self.flow",
                "self.server_state",
                "self.tasks",
            ),
        ),
        Target("uvicorn.protocols.http.flow_control", "HIGH_WATER_LIMIT"),
        Target("_bentoml_impl.worker.service", uses=("uvicorn.Config(",)),
    ),
    apply=apply,
    in_effect=in_effect,
)
