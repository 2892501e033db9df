"""Request read timeouts that uvicorn (0.54, httptools) does not have.

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
has already started) and the connection is closed. 0 turns a timeout off.

BentoML 1.4.39 builds uvicorn.Config without `http=` (_bentoml_impl/worker/service.py), so
"auto" is used; `install()` points "auto" at this class. Call it at import of the service
module: the worker imports it before creating its uvicorn.Config.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import settings

_MSG = json.dumps(
    {"error": "the request was not received in time (HTTP_HEADER_TIMEOUT, HTTP_BODY_TIMEOUT)"}
).encode()
_RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_MSG)).encode() + b"\r\nconnection: close\r\n\r\n" + _MSG
)


class ReadTimeoutHttpToolsProtocol(HttpToolsProtocol):
    header_timeout = settings().http_header_timeout_s
    body_timeout = settings().http_body_timeout_s

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, callback) -> None:
        self._disarm()
        if seconds > 0:
            self._read_timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    # A fresh connection: the clock for its first request's headers starts now.
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, self._on_header_timeout)

    # A reused connection: the clock starts at the request's first byte.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_timer is None:
            self._arm(self.header_timeout, self._on_header_timeout)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._arm(self.body_timeout, self._on_body_timeout)  # on_message_complete disarms

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._read_timer is not None:
            self._arm(self.body_timeout, self._on_body_timeout)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _on_header_timeout(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's headers stalled while the previous response is being
            # produced: let that response finish first.
            self._arm(self.header_timeout, self._on_header_timeout)
            return
        self.transport.write(_RESPONSE_408)
        self.transport.close()

    def _on_body_timeout(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # back-pressure: the app isn't reading, not the client's fault
            self._arm(self.body_timeout, self._on_body_timeout)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.response_started = True  # the app's own response, if any, is dropped
            self.transport.write(_RESPONSE_408)
        self.transport.close()  # connection_lost tells the app: http.disconnect


def install() -> None:
    """Make uvicorn's default ("auto") HTTP protocol this one, if a timeout is configured."""
    if settings().http_header_timeout_s <= 0 and settings().http_body_timeout_s <= 0:
        return
    import uvicorn.config

    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:ReadTimeoutHttpToolsProtocol"
